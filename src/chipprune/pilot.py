"""Pilot mode: how far can a model be compressed on the user's own data before accuracy falls?

For each compression level (a MAC budget) the pilot plans, prunes a copy of the model with scores
computed once, re-estimates BatchNorm statistics, optionally fine-tunes briefly, then measures test
accuracy and batch-1 latency. Accuracy is compared with the unpruned model *on the same images*
(paired), which gives a much tighter interval for the drop than two separate accuracies would.

Statistics (all normal approximations, documented in docs/PILOT.md):
  accuracy interval: Wilson score interval for correct/n;
  drop interval: mean of the paired differences d_i = base_i - pruned_i in {-1, 0, 1}, +- z * sd(d)/sqrt(n).
Recommendation: the smallest model (fewest MACs) whose upper bound of the drop is within --max-drop.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import torch
import torch.nn as nn

from .data import data_location, open_data
from .errors import ChipPruneError
from .files import atomic_write_bytes, read_json, save_tensors, write_json
from .latency import measure_latency
from .metrics import correct_flags, count_macs, count_params, recalibrate_batchnorm
from .models.registry import ModelSpec
from .pipeline import Calibration, Plan, _keep_counts, make_pruning_plan, prunable_groups, prune_model
from .plan import plan_from_patterns
from .report import pyplot
from .scoring import GroupScores, score_groups

__all__ = ["LevelResult", "wilson_interval", "paired_drop_interval", "recommend", "run_pilot", "sensitivity"]


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion, in percent."""
    if n == 0:
        return (float("nan"), float("nan"))
    z, p = _z(confidence), correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (100 * (centre - half), 100 * (centre + half))


def paired_drop_interval(base: torch.Tensor, pruned: torch.Tensor, confidence: float = 0.95) -> tuple[float, float, float]:
    """Accuracy drop (base - pruned, points) and its interval from per-image correctness on the same images."""
    if base.shape != pruned.shape or base.numel() == 0:
        raise ChipPruneError("paired comparison needs the same, non-empty test images for both models")
    d = base.double() - pruned.double()
    n = d.numel()
    mean = float(d.mean())
    sd = float(d.std(unbiased=True)) if n > 1 else 0.0
    half = _z(confidence) * sd / math.sqrt(n)
    return 100 * mean, 100 * (mean - half), 100 * (mean + half)


@dataclass
class LevelResult:
    target: float  # MAC budget as a fraction of the original
    params: int
    macs: int
    latency_ms: float
    top1: float
    top1_low: float
    top1_high: float
    drop: float
    drop_low: float
    drop_high: float
    finetune_epochs: int
    throughput_ms: float = float("nan")  # latency at the throughput batch (absent in older pilot folders)


def recommend(levels: list[LevelResult], max_drop: float) -> LevelResult | None:
    """The level with the fewest MACs whose drop, at its upper confidence bound, is within ``max_drop``."""
    safe = [lv for lv in levels if lv.drop_high <= max_drop]
    return min(safe, key=lambda lv: lv.macs) if safe else None


def _test_loader(spec: ModelSpec, source):
    loader = source.test_loader(spec)
    if len(loader.dataset) == 0:
        raise ChipPruneError(f"{source.description} has no test images; the pilot needs held-out images to measure accuracy")
    return loader


def _load_scores(path: Path, groups) -> dict[str, GroupScores] | None:
    """The scores a previous run of this pilot saved, or None (none, or unreadable: scored again)."""
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception:  # noqa: BLE001 - a damaged cache is recomputed
        return None
    if set(tensors) != {g.name for g in groups}:
        return None
    return {k: GroupScores(k, v.double(), [], 0, float("nan")) for k, v in tensors.items()}


def _load_json(path: Path) -> Any:
    """What a previous run of this pilot saved at ``path``, or None (none, or unreadable: redone)."""
    try:
        return read_json(path) if path.is_file() else None
    except ChipPruneError:
        return None


def _load_level(path: Path) -> LevelResult | None:
    """A level a previous run of this pilot finished, or None (none, or unreadable: measured again)."""
    saved = _load_json(path)
    try:
        return LevelResult(**saved) if isinstance(saved, dict) else None
    except TypeError:  # other fields
        return None


def _weights_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _claim_folder(out: Path, settings: dict[str, Any]) -> None:
    """Record what this pilot's results depend on; refuse a folder holding results of other settings,
    which a resumed run would otherwise mix with its own."""
    settings = json.loads(json.dumps(settings))
    path = out / "settings.json"
    if path.is_file():
        saved = read_json(path)
        if not isinstance(saved, dict):
            raise ChipPruneError(f"{path} is damaged; remove the folder {out} (or choose another --out) to start over")
        changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v]
        if changed:
            shown = [c if not c.startswith("weights_sha256") else "the model's weights" for c in changed]
            raise ChipPruneError(
                f"{out} holds pilot results for other settings ({'; '.join(shown)}); "
                "choose another --out, or remove the folder to start over"
            )
    elif (out / "scores.safetensors").is_file() or any((out / "levels").glob("*.json")):
        raise ChipPruneError(
            f"{out} holds pilot results without a record of their settings; choose another --out, or remove the folder"
        )
    write_json(path, settings)


def run_pilot(
    model: nn.Module,
    spec: ModelSpec,
    data: str | Path | None,
    out: str | Path,
    *,
    levels: list[float] = (0.8, 0.65, 0.5, 0.35),
    calibration: Calibration | None = None,
    finetune_epochs: int = 0,
    max_drop: float = 1.0,
    confidence: float = 0.95,
    round_to: int = 1,
    throughput_batch: int = 64,
    criterion: str = "chip",
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Sweep MAC budgets; write pilot.json, pilot.md, pilot.png into ``out``. Finished levels are reused.

    Latency is measured in eager PyTorch on ``device`` at batch 1 and at ``throughput_batch``."""
    levels = sorted({float(lv) for lv in levels}, reverse=True)
    if any(not 0 < lv < 1 for lv in levels):
        raise ChipPruneError(f"pilot levels are MAC fractions in (0, 1); got {levels}")
    if not 0 < confidence < 1:
        raise ChipPruneError(f"confidence must lie in (0, 1), e.g. 0.95; got {confidence}")
    if throughput_batch < 1 or finetune_epochs < 0 or round_to < 1:
        raise ChipPruneError("throughput batch and --round-to must be at least 1, fine-tuning epochs at least 0")
    out = Path(out)
    (out / "levels").mkdir(parents=True, exist_ok=True)
    calibration = calibration or Calibration(data=data)
    source = open_data(data)
    test_loader = _test_loader(spec, source)
    model = model.to(device).eval()
    _claim_folder(out, {
        "model": spec.name, "image_size": spec.image_size, "weights_sha256": _weights_digest(model),
        "data": data_location(data), "calibration_images": calibration.images, "calibration_batch_size": calibration.batch_size,
        "calibration_seed": calibration.seed, "calibration_augment": calibration.augment, "round_to": round_to,
        "finetune_epochs": finetune_epochs, "confidence": confidence, "throughput_batch": throughput_batch,
        "criterion": criterion, "device": str(torch.device(device)),
    })
    base_flags = correct_flags(model, test_loader, device)
    base_top1 = 100 * float(base_flags.double().mean())
    # The original's latency is timed once per pilot folder, like the levels': a resumed pilot
    # compares the levels it reuses with the timing they were measured beside.
    timing = _load_json(out / "baseline_latency.json")
    if not (isinstance(timing, dict) and {"latency_ms", "throughput_ms"} <= set(timing)):
        timing = {
            "latency_ms": measure_latency(model, spec.image_size, 1, device=device, min_run_time=0.5).median_ms,
            "throughput_ms": measure_latency(model, spec.image_size, throughput_batch, device=device, min_run_time=0.5).median_ms,
        }
        write_json(out / "baseline_latency.json", timing)
    base = {
        "params": count_params(model),
        "macs": count_macs(model, spec.image_size),
        "latency_ms": timing["latency_ms"],
        "throughput_ms": timing["throughput_ms"],
        "throughput_batch": throughput_batch,
        "top1": base_top1,
        "top1_interval": wilson_interval(int(base_flags.sum()), base_flags.numel(), confidence),
        "test_images": base_flags.numel(),
    }

    dg, groups, classifier = prunable_groups(model, spec)
    scores = _load_scores(out / "scores.safetensors", groups)
    if scores is None:  # scored once, reused by every level (and by a resumed pilot)
        scores = score_groups(model, groups, calibration.loader(spec, source), criterion=criterion, device=device, progress=progress)
        save_tensors({k: v.scores for k, v in scores.items()}, out / "scores.safetensors")

    results: list[LevelResult] = []
    for target in levels:
        path = out / "levels" / f"macs-{target:.3f}.json"
        finished = _load_level(path)
        if finished is not None:
            results.append(finished)
            continue
        candidate = copy.deepcopy(model)
        c_dg, c_groups, c_cls = prunable_groups(candidate, spec)
        plan = make_pruning_plan(candidate, spec, c_groups, target_macs=target, round_to=round_to)
        prune_model(candidate, spec, plan, c_groups, c_dg, c_cls, None, scores=scores, progress=False)
        recalibrate_batchnorm(candidate, calibration.loader(spec, source), device)
        if finetune_epochs > 0:
            candidate = _short_finetune(candidate, spec, source, out / "levels" / f"macs-{target:.3f}-finetune", finetune_epochs, calibration.seed, device)
        flags = correct_flags(candidate, test_loader, device)
        drop, drop_low, drop_high = paired_drop_interval(base_flags, flags, confidence)
        low, high = wilson_interval(int(flags.sum()), flags.numel(), confidence)
        result = LevelResult(
            target, count_params(candidate), count_macs(candidate, spec.image_size),
            measure_latency(candidate, spec.image_size, 1, device=device, min_run_time=0.5).median_ms,
            100 * float(flags.double().mean()), low, high, drop, drop_low, drop_high, finetune_epochs,
            measure_latency(candidate, spec.image_size, throughput_batch, device=device, min_run_time=0.5).median_ms,
        )
        write_json(path, asdict(result))  # a finished level survives an interruption
        results.append(result)
        if progress:
            print(f"level {target:.0%} of MACs: top-1 {result.top1:.2f}% (drop {drop:+.2f}, up to {drop_high:+.2f}), {result.latency_ms:.2f} ms")

    best = recommend(results, max_drop)
    summary = {
        "model": spec.name,
        "data": source.description,
        "criterion": criterion,
        "confidence": confidence,
        "max_drop": max_drop,
        "baseline": base,
        "levels": [asdict(r) for r in results],
        "recommended": asdict(best) if best else None,
    }
    write_json(out / "pilot.json", summary)
    _plot(out / "pilot.png", base, results)
    atomic_write_bytes(out / "pilot.md", pilot_markdown(summary).encode())
    return summary


def _short_finetune(model, spec, source, out, epochs, seed, device):
    from .distributed import Dist
    from .train import TrainConfig, fit, recipe_with

    recipe = recipe_with("chip-cifar" if spec.image_size <= 64 else "chip-imagenet", epochs=epochs, warmup_epochs=0)
    fit(model, spec, source, TrainConfig(recipe, out, seed=seed, val_fraction=0.0, progress=False), Dist(device=torch.device(device)))
    return model.eval()


def _plot(path: Path, base: dict[str, Any], results: list[LevelResult]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    points = sorted(
        [(r.macs / 1e6, r.top1, r.top1 - r.top1_low, r.top1_high - r.top1, r.latency_ms) for r in results]
        + [(base["macs"] / 1e6, base["top1"], base["top1"] - base["top1_interval"][0], base["top1_interval"][1] - base["top1"], base["latency_ms"])]
    )
    macs, top1, low, high, latency = (list(v) for v in zip(*points))
    ax.errorbar(macs, top1, yerr=[low, high], fmt="o-", capsize=4, label="top-1 (Wilson interval)")
    ax.annotate("original", (base["macs"] / 1e6, base["top1"]), textcoords="offset points", xytext=(-20, 8), fontsize=8)
    ax.set_xlabel("MACs per image (millions)")
    ax.set_ylabel("test top-1 (%)")
    ax2 = ax.twinx()
    ax2.plot(macs, latency, "s--", color="tab:orange", label="latency, batch 1")
    ax2.set_ylabel("latency at batch 1 (ms)")
    ax.set_title("pilot: accuracy and latency vs compute")
    fig.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def pilot_markdown(summary: dict[str, Any]) -> str:
    """A one-page report a manager can read."""
    b, conf = summary["baseline"], summary["confidence"]
    tb, nan = b.get("throughput_batch", "?"), float("nan")
    lines = [
        f"# Pilot: how far can {summary['model']} be compressed?",
        "",
        f"Data: {summary['data']}; {b['test_images']} test images. Channels ranked by {summary.get('criterion', 'chip').upper()}. "
        f"Intervals at {conf:.0%} confidence.",
        "",
        f"| MACs (target) | params | MACs | latency b=1 | speed-up | latency b={tb} | speed-up | top-1 (%) | interval | drop (points) | drop up to |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| original | {b['params']:,} | {b['macs']:,} | {b['latency_ms']:.2f} ms | 1.00x | {b.get('throughput_ms', nan):.1f} ms | 1.00x | "
        f"{b['top1']:.2f} | {b['top1_interval'][0]:.1f}-{b['top1_interval'][1]:.1f} | | |",
    ]
    for lv in summary["levels"]:
        lines.append(
            f"| {lv['target']:.0%} | {lv['params']:,} | {lv['macs']:,} | {lv['latency_ms']:.2f} ms | "
            f"{b['latency_ms'] / lv['latency_ms']:.2f}x | {lv.get('throughput_ms', nan):.1f} ms | "
            f"{b.get('throughput_ms', nan) / lv.get('throughput_ms', nan):.2f}x | {lv['top1']:.2f} | {lv['top1_low']:.1f}-{lv['top1_high']:.1f} | "
            f"{lv['drop']:+.2f} | {lv['drop_high']:+.2f} |"
        )
    rec = summary["recommended"]
    ft = summary["levels"][0]["finetune_epochs"] if summary["levels"] else 0
    how = f"after {ft} epoch(s) of fine-tuning" if ft else "without fine-tuning (BatchNorm statistics re-estimated only)"
    lines += ["", "![accuracy and latency vs MACs](pilot.png)", "", "## Recommendation", ""]
    if rec:
        lines.append(
            f"Prune to **{rec['target']:.0%} of the MACs** ({rec['macs']:,} MACs, {rec['params']:,} parameters): "
            f"the smallest level whose accuracy drop stays within {summary['max_drop']} point(s) at {conf:.0%} "
            f"confidence (measured drop {rec['drop']:+.2f}, at most {rec['drop_high']:+.2f}), {how}. "
            f"It runs {b['latency_ms'] / rec['latency_ms']:.2f}x as fast at batch 1 and "
            f"{b.get('throughput_ms', nan) / rec.get('throughput_ms', nan):.2f}x at batch {tb} on this machine (eager PyTorch)."
        )
    else:
        lines.append(
            f"No level keeps the drop within {summary['max_drop']} point(s) at {conf:.0%} confidence {how}. "
            "Fine-tune (--finetune-epochs), try milder levels, or use more test images to narrow the intervals."
        )
    lines += [
        "",
        "How to read this: the drop is measured on the same test images as the original (a paired comparison), "
        "so its interval is much narrower than the accuracy intervals. More test images narrow both. "
        "A pilot on a sample predicts, it does not guarantee: confirm the chosen level on the full data.",
    ]
    return "\n".join(lines) + "\n"


def sensitivity(
    model: nn.Module,
    spec: ModelSpec,
    data: str | Path | None,
    out: str | Path,
    *,
    ratios: list[float] = (0.3, 0.5, 0.7),
    calibration: Calibration | None = None,
    max_drop: float = 1.0,
    criterion: str = "chip",
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Prune one group at a time at each ratio (BN re-estimated, no fine-tuning) and record the drop.

    Writes sensitivity.json, sensitivity.png and suggested_plan.json: per group the largest tried
    ratio whose drop stayed within ``max_drop`` (a plan file ``chipprune prune --sparsity`` accepts).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    calibration = calibration or Calibration(data=data)
    source = open_data(data)
    test_loader = _test_loader(spec, source)
    model = model.to(device).eval()
    base_flags = correct_flags(model, test_loader, device)
    dg, groups, classifier = prunable_groups(model, spec)
    scores = score_groups(model, groups, calibration.loader(spec, source), criterion=criterion, device=device, progress=progress)
    table: dict[str, dict[str, float]] = {}
    for g in groups:
        table[g.name] = {}
        for ratio in ratios:
            candidate = copy.deepcopy(model)
            c_dg, c_groups, c_cls = prunable_groups(candidate, spec)
            # Only group g loses channels; no size estimate is needed, so the plan is written directly.
            keep = {c.name: c.channels for c in c_groups} | _keep_counts([g], {g.name: ratio}, 1)
            plan = Plan({g.name: ratio}, keep, f"{g.name} at {ratio:g}")
            prune_model(candidate, spec, plan, c_groups, c_dg, c_cls, None, scores=scores, progress=False)
            recalibrate_batchnorm(candidate, calibration.loader(spec, source), device)
            drop, _, _ = paired_drop_interval(base_flags, correct_flags(candidate, test_loader, device))
            table[g.name][f"{ratio:g}"] = drop
        if progress:
            print(f"{g.name:32} " + "  ".join(f"{r:g}: {d:+.2f}" for r, d in table[g.name].items()))
    suggested = {}
    for g in groups:
        ok = [r for r in ratios if table[g.name][f"{r:g}"] <= max_drop]
        if ok:
            suggested[g.name] = max(ok)
    plan_from_patterns(suggested, groups, "suggested plan")  # the file must be accepted by `prune`
    write_json(out / "suggested_plan.json", suggested)
    write_json(out / "sensitivity.json", {"model": spec.name, "ratios": list(ratios), "max_drop": max_drop, "drops": table})
    _plot_sensitivity(out / "sensitivity.png", table, ratios)
    return {"drops": table, "suggested_plan": suggested}


def _plot_sensitivity(path: Path, table: dict[str, dict[str, float]], ratios) -> None:
    plt = pyplot()
    names = list(table)
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(names)), 3.8))
    width = 0.8 / len(ratios)
    for i, r in enumerate(ratios):
        ax.bar([j + i * width for j in range(len(names))], [table[n][f"{r:g}"] for n in names], width, label=f"ratio {r:g}")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=90, fontsize=7)
    ax.set_ylabel("top-1 drop (points)")
    ax.set_title("sensitivity: one group pruned at a time (no fine-tuning)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
