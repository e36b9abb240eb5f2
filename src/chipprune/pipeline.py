"""The CHIP pipeline as a library: load a model, plan, score, prune, save and reload it.

    import chipprune
    model, spec = chipprune.load_model("cifar_resnet56", weights="bundled")
    result = chipprune.prune(model, spec, sparsity="[0.]+[0.15]*2+[0.4]*27", calibration=chipprune.Calibration())
    chipprune.save_pruned(result, "out/")
    same = chipprune.load_pruned("out/")
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.utils.data import Subset

from . import __version__
from .criteria import needs_images, score_with
from .latency import measure_latency
from .latency_plan import BlendedLatency, parse_latency_target, plan_for_latency
from .latency_table import LatencyModel, LatencyTable
from .data import DataSource, SeededAugmentation, data_location, make_loader, make_transform, open_data
from .distributed import world
from .errors import ChipPruneError
from .files import read_json, save_state_dict, write_json
from .graph import ChannelGroup, build_graph, build_groups, find_classifier, prune_group
from .metrics import count_macs, count_params, device_of, evaluate, recalibrate_batchnorm
from .models.registry import ModelSpec, create_model, get_model_spec
from .plan import PAPER_SPARSITY, channels_to_keep, make_plan, paper_feature_sources, select_top
from .scoring import GroupScores
from .weights import load_weights

__all__ = [
    "Calibration",
    "Plan",
    "PruneResult",
    "load_model",
    "prunable_groups",
    "make_pruning_plan",
    "make_latency_plan",
    "score",
    "prune_model",
    "prune",
    "save_pruned",
    "load_pruned",
    "open_pruned",
    "read_pruned_record",
    "pruning_record",
]

PRUNED_FORMAT = "chipprune-pruned/1"


def load_model(
    name: str, weights: str | Path | None = "bundled", num_classes: int | None = None, image_size: int | None = None
) -> tuple[nn.Module, ModelSpec]:
    """Build a registry model (or ``package.module:function``) and load weights: ``"bundled"`` (the
    shipped ones; an error for models that ship none), a file path, or None/"none" (random init)."""
    spec = get_model_spec(name, image_size)
    model = create_model(name, num_classes)
    if weights == "bundled":
        path = spec.bundled_weights_path()
        if path is None:
            raise ChipPruneError(
                f"no weights ship with '{name}'; pass --weights FILE (a state dict or safetensors), "
                "or --weights none to use random initialisation"
            )
        load_weights(model, path)
    elif weights is not None and str(weights) != "none":
        load_weights(model, weights)
    return model.eval(), spec


@dataclass
class Calibration:
    """Which images score the channels (the paper: 5 batches of 128 augmented training images)."""

    data: str | Path | None = None
    images: int = 640
    batch_size: int = 128
    seed: int = 0
    augment: bool = True
    require_all: bool = False  # stop, rather than use fewer images, when the data has fewer than `images`

    def loader(self, spec: ModelSpec, source: DataSource | None = None):
        source = source or open_data(self.data)
        dataset = source.split("train", make_transform(spec, self.augment, source.image_size))
        if len(dataset) == 0:
            raise ChipPruneError(f"{source.description}: the training split holds no images")
        if self.images > len(dataset) and self.require_all:
            raise ChipPruneError(
                f"{self.images} calibration images asked for, but {source.description} has {len(dataset)} training images"
            )
        if self.images > len(dataset):
            warnings.warn(f"{self.images} calibration images asked for, {source.description} has {len(dataset)}; using them all")
        loader = make_loader(SeededAugmentation(dataset, self.seed), self.batch_size, shuffle=False, limit=self.images, seed=self.seed)
        rank, processes = world()
        if processes > 1:
            if len(loader.dataset) < processes:
                raise ChipPruneError(
                    f"{len(loader.dataset)} calibration images cannot be shared among {processes} processes; "
                    "use more images or fewer processes"
                )
            # Under torchrun each process scores its share of the images; score sums are reduced.
            share = list(range(len(loader.dataset)))[rank::processes]
            loader = make_loader(Subset(loader.dataset, share), self.batch_size)
        return loader


def _example_input(spec: ModelSpec, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.zeros(1, 3, spec.image_size, spec.image_size, device=device)


def prunable_groups(
    model: nn.Module, spec: ModelSpec, ignored: list[str] | None = None
) -> tuple[tp.DependencyGraph, list[ChannelGroup], str]:
    """Trace ``model`` and return (dependency graph, coupled channel groups, classifier name)."""
    names = set(dict(model.named_modules()))
    unknown = [n for n in ignored or [] if n not in names]
    if unknown:
        raise ChipPruneError(f"--ignore names no layer of the model: {', '.join(unknown)}")
    was_training = model.training
    model.eval()  # tracing runs the model; BatchNorm statistics must not move
    try:
        example = _example_input(spec, device_of(model))
        classifier = find_classifier(model, example)
        dg, groups = build_groups(model, example, [classifier, *(ignored or [])])
    finally:
        model.train(was_training)
    paper_feature_sources(spec, groups)
    return dg, groups, classifier


@dataclass
class Plan:
    """How many channels each group keeps, before any scoring."""

    ratios: dict[str, float]  # group -> ratio
    keep: dict[str, int]  # group -> channels kept
    description: str  # the sparsity string, plan file or MAC target it came from
    round_to: int = 1
    notes: list[str] = field(default_factory=list)
    params: int = 0  # after pruning
    macs: int = 0
    # Latency plans: per batch size, the original's measured and the plan's predicted milliseconds.
    latency: dict[str, dict[str, float]] = field(default_factory=dict)


def _size_after(model: nn.Module, spec: ModelSpec, groups: list[ChannelGroup], keep: dict[str, int]) -> tuple[int, int]:
    """Params and MACs of ``model`` with ``keep[g]`` channels per group (any channels: sizes do not
    depend on which). Works on a copy; the model is untouched."""
    trial = copy.deepcopy(model).eval()
    dg = build_graph(trial, _example_input(spec, device_of(trial)))
    for g in groups:
        if keep.get(g.name, g.channels) < g.channels:
            _, remove = select_top(torch.zeros(g.channels), keep[g.name], g.channel_groups)
            prune_group(dg, trial, g.name, remove)
    return count_params(trial), count_macs(trial, spec.image_size)


def _keep_counts(groups: list[ChannelGroup], ratios: dict[str, float], round_to: int) -> dict[str, int]:
    keep = {}
    for g in groups:
        block = g.channels // g.channel_groups if g.channels % g.channel_groups == 0 else g.channels
        ratio = ratios.get(g.name, 0.0)
        if ratio > 0 and int(block * (1.0 - ratio)) == 0:
            raise ChipPruneError(
                f"ratio {ratio} would leave group '{g.name}' ({block} channels"
                f"{' per block' if block != g.channels else ''}) with no channels; "
                f"the largest ratio it allows is {1 - 1 / block:.4f}"
            )
        per_block = channels_to_keep(block, ratio, round_to)
        keep[g.name] = per_block * (g.channels // block)
    return keep


def make_pruning_plan(
    model: nn.Module,
    spec: ModelSpec,
    groups: list[ChannelGroup],
    *,
    sparsity: str | None = None,
    target_macs: float | None = None,
    round_to: int = 1,
) -> Plan:
    """Resolve a sparsity string / plan file / one ratio, or a MAC target, into channels per group.

    ``target_macs`` <= 1 is a fraction of the model's MACs, above 1 an absolute count; one ratio for
    every group is searched (bisection) until the pruned MACs are within 1% of the target.
    """
    if round_to < 1:
        raise ChipPruneError(f"--round-to must be a positive integer, got {round_to}")
    if target_macs is not None:
        if sparsity is not None:
            raise ChipPruneError("give either --sparsity or --target-macs, not both")
        plan = _plan_for_macs(model, spec, groups, target_macs, round_to)
    else:
        sparsity = PAPER_SPARSITY.get(spec.name) if sparsity is None else sparsity
        if sparsity is None:
            raise ChipPruneError(f"no default sparsity for '{spec.name}'; pass one, e.g. --sparsity 0.3")
        ratios, notes = make_plan(sparsity, spec, groups, model)
        keep = _keep_counts(groups, ratios, round_to)
        params, macs = _size_after(model, spec, groups, keep)
        plan = Plan(ratios, keep, sparsity, round_to, notes, params, macs)
    narrow = [g.name for g in groups if g.channels // g.channel_groups <= round_to and plan.keep[g.name] < g.channels]
    if round_to > 1 and narrow:
        plan.notes.append(
            f"{len(narrow)} group(s) with at most {round_to} channels (per block) are pruned without rounding "
            f"(--round-to {round_to} would leave them all or nothing): {', '.join(narrow[:3])}{' and more' if len(narrow) > 3 else ''}"
        )
    return plan


def _plan_for_macs(model: nn.Module, spec: ModelSpec, groups: list[ChannelGroup], target: float, round_to: int) -> Plan:
    """Search one pruning level for all groups until the MACs are within 1% of the target.

    At level r group g keeps about C_g (1 - r) channels, rounded down after adding a fixed offset
    that differs per group: as r grows, groups lose channels one at a time instead of all at once,
    so the MACs fall in small steps and bisection can land close to the target.
    """
    base = count_macs(model, spec.image_size)
    goal = target * base if target <= 1 else target
    if 1 < target < 1000:  # neither a fraction nor a plausible count of MACs
        raise ChipPruneError(
            f"--target-macs {target:g}: give the fraction of the MACs to keep, in (0, 1) (e.g. 0.5), or a count of MACs "
            f"(the model has {base:,})"
        )
    if not 0 < goal < base:
        raise ChipPruneError(
            f"--target-macs {target} asks for {goal:,.0f} MACs; the model has {base:,} (give a fraction in (0, 1) or fewer MACs)"
        )
    offsets = {g.name: (i + 0.5) / len(groups) for i, g in enumerate(groups)}

    def attempt(r: float) -> Plan:
        keep = {}
        for g in groups:
            block = g.channels // g.channel_groups
            units = max(1, int(block * (1 - r) / round_to + offsets[g.name]))
            keep[g.name] = min(block, units * round_to) * g.channel_groups if block > round_to else g.channels
        params, macs = _size_after(model, spec, groups, keep)
        ratios = {g.name: 1 - keep[g.name] / g.channels for g in groups}
        return Plan(ratios, keep, f"target MACs {goal:,.0f} ({goal / base:.1%})", round_to, [], params, macs)

    lo, hi = 0.0, 0.99
    best = attempt(hi)
    if best.macs > goal * 1.01:
        raise ChipPruneError(
            f"--target-macs {target} cannot be reached: keeping 1% of every prunable group leaves "
            f"{best.macs:,} MACs ({best.macs / base:.1%}); the rest is in layers that are not pruned"
        )
    for _ in range(40):
        mid = (lo + hi) / 2
        trial = attempt(mid)
        if abs(trial.macs - goal) < abs(best.macs - goal):
            best = trial
        if abs(trial.macs - goal) <= 0.005 * goal or hi - lo < 1e-5:
            break
        lo, hi = (mid, hi) if trial.macs > goal else (lo, mid)
    if abs(best.macs - goal) > 0.01 * goal:
        best = _nudge_towards(model, spec, groups, best, goal, round_to)
    best.notes.append(f"{best.macs:,} MACs = {best.macs / base:.1%} of {base:,} (target {goal / base:.1%})")
    if abs(best.macs - goal) > 0.01 * goal:
        step = f"{round_to} channels (--round-to)" if round_to > 1 else "one channel"
        best.notes.append(
            f"the closest plan found has {best.macs / base:.1%} of the MACs against {goal / base:.1%} asked: "
            f"widths move in steps of {step}, and a step of some group moves the MACs by more than the 1% tolerance"
        )
    return best


def _nudge_towards(model: nn.Module, spec: ModelSpec, groups: list[ChannelGroup], plan: Plan, goal: float, round_to: int) -> Plan:
    """Move single groups one width step towards ``goal`` when one level for all groups lands too far
    from it (wide --round-to steps): each group's step is measured alone, the steps that bring the
    MACs closest are combined, and the result is kept if it is really closer."""
    direction = 1 if plan.macs < goal else -1
    deltas = {}
    for g in groups:
        step = round_to * g.channel_groups
        moved = plan.keep[g.name] + direction * step
        if g.channels // g.channel_groups > round_to and step <= moved <= g.channels:
            deltas[g.name] = (moved, _size_after(model, spec, groups, {**plan.keep, g.name: moved})[1] - plan.macs)
    keep, missing = dict(plan.keep), goal - plan.macs
    for name, (moved, delta) in sorted(deltas.items(), key=lambda item: -abs(item[1][1])):
        if abs(missing - delta) < abs(missing):
            keep[name], missing = moved, missing - delta
    params, macs = _size_after(model, spec, groups, keep)
    if abs(macs - goal) >= abs(plan.macs - goal):
        return plan
    ratios = {g.name: 1 - keep[g.name] / g.channels for g in groups}
    return Plan(ratios, keep, plan.description, round_to, [], params, macs)


def make_latency_plan(
    model: nn.Module,
    spec: ModelSpec,
    groups: list[ChannelGroup],
    scores: dict[str, GroupScores],
    target: str | float,
    *,
    batch_sizes: Iterable[int] = (1,),
    table: str | Path | None = None,
    max_shared_ratio: float = 0.3,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Plan:
    """Channels per group for a latency budget: ``target`` is a fraction of the original latency
    (0.5) or milliseconds ("12ms", one batch size only), on this device, at ``batch_sizes`` (with
    several, the mean of the fractions). Layers are timed into ``table`` (default: this machine's
    cache) as the search needs them; ``scores`` decide which groups give up channels; residual
    streams lose at most ``max_shared_ratio`` of their channels."""
    batch_sizes = list(dict.fromkeys(int(b) for b in batch_sizes))
    if not batch_sizes or min(batch_sizes) < 1:
        raise ChipPruneError(f"latency batch sizes must be positive integers, got {batch_sizes}")
    kind, value = parse_latency_target(target)
    if kind == "ms" and len(batch_sizes) > 1:
        raise ChipPruneError("a latency target in milliseconds needs exactly one --latency-batch; give a fraction for several")
    latency_table = LatencyTable(table, device)
    models = [LatencyModel(model, spec, groups, latency_table, batch_size=b, progress=progress) for b in batch_sizes]
    predictor = models[0] if len(models) == 1 else BlendedLatency(models)
    goal = value if kind == "ms" else value * predictor.original
    if kind == "ms" and goal >= predictor.original:
        raise ChipPruneError(f"--target-latency {target}: the unpruned model already takes {predictor.original:.2f} ms at batch {batch_sizes[0]}")
    try:
        found = plan_for_latency(groups, scores, predictor, goal, max_shared_ratio=max_shared_ratio, progress=progress)
    finally:
        latency_table.save()
    keep = {g.name: found.keep[g.name] for g in groups}
    params, macs = _size_after(model, spec, groups, keep)
    batches = ", ".join(map(str, batch_sizes))
    what = f"{value:g} ms" if kind == "ms" else f"{value:.0%} of the original"
    plan = Plan({g.name: 1 - keep[g.name] / g.channels for g in groups}, keep, f"target latency {what} at batch {batches}",
                1, [], params, macs)
    for b, m in zip(batch_sizes, models):
        m.refresh(keep)
        predicted = m.predict(keep)
        plan.latency[str(b)] = {"original_ms": m.original, "predicted_ms": predicted}
        plan.notes.append(f"batch {b}: predicted {m.original / predicted:.2f}x faster ({predicted:.2f} of {m.original:.2f} ms at the "
                          f"latency table's reference speed; {latency_table.measured} layer timings taken, table {latency_table.path})")
    return plan


def score(
    model: nn.Module,
    spec: ModelSpec,
    calibration: Calibration,
    *,
    groups: list[ChannelGroup] | None = None,
    criterion: str = "chip",
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, GroupScores]:
    """Score every channel of every prunable group (or of ``groups``) on the calibration images."""
    dg = None  # the dependency graph is only needed to find groups or for weight-based criteria
    if groups is None or not needs_images(criterion):
        dg, all_groups, _ = prunable_groups(model, spec)
        groups = all_groups if groups is None else groups
    loader = None
    if needs_images(criterion):
        loader = calibration.loader(spec)
    return score_with(
        criterion, model, dg, groups, loader, device=device, seed=calibration.seed, progress=progress,
        total=len(loader) if loader is not None else None,
    )


@dataclass
class PruneResult:
    """A pruned model with everything needed to save it and to report on it."""

    model: nn.Module
    spec: ModelSpec
    record: dict[str, Any]
    report: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def prune_model(
    model: nn.Module,
    spec: ModelSpec,
    plan: Plan,
    groups: list[ChannelGroup],
    dg: tp.DependencyGraph,
    classifier: str,
    batches: Iterable | None,
    *,
    criterion: str = "chip",
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
    total: int | None = None,
    scores: dict[str, GroupScores] | None = None,
) -> PruneResult:
    """Score the groups the plan prunes (unless ``scores`` are given, e.g. reused across plans), then
    remove the lowest-scoring channels of ``model`` in place."""
    to_score = [g for g in groups if plan.keep[g.name] < g.channels]
    if scores is None:
        scores = score_with(criterion, model, dg, to_score, batches, device=device, seed=seed, progress=progress, total=total)
    records = []
    for g in to_score:
        ratio = 1.0 - plan.keep[g.name] / g.channels
        # The plan fixed the count; re-deriving it from a ratio in floating point could miss by one.
        keep, remove = select_top(scores[g.name].scores, plan.keep[g.name], g.channel_groups)
        prune_group(dg, model, g.name, remove)
        records.append(
            {
                "group": g.name,
                "members": g.members,
                "ratio": round(ratio, 6),
                "channels_before": g.channels,
                "channels_after": len(keep),
                "removed": remove,
                "scored_maps": scores[g.name].maps,
                "split_half_spearman": round(scores[g.name].split_half_spearman, 6),
            }
        )
    record = pruning_record(model, spec, records, criterion=criterion, sparsity=plan.description, classifier=classifier,
                            round_to=plan.round_to, notes=plan.notes)
    images = scores[to_score[0].name].images if to_score else 0
    return PruneResult(model, spec, record, {"calibration_images": images}, list(plan.notes))


def prune(
    model: nn.Module,
    spec: ModelSpec,
    *,
    sparsity: str | None = None,
    target_macs: float | None = None,
    round_to: int = 1,
    ignored: list[str] | None = None,
    calibration: Calibration | None = None,
    criterion: str = "chip",
    evaluate_on: str | Path | None | bool = True,
    recalibrate_bn: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = True,
    target_latency: str | float | None = None,
    latency_batch_sizes: Iterable[int] = (1,),
    latency_table: str | Path | None = None,
    max_shared_ratio: float = 0.3,
) -> PruneResult:
    """Plan, score and remove channels of ``model`` in place; evaluate before and after when test data exists.

    ``sparsity`` is a paper string, one ratio, or a plan file (default: the paper's setting for the
    model); or ``target_macs`` a MAC budget; or ``target_latency`` a latency budget on this device
    (see make_latency_plan), which also measures the latency before and after. ``evaluate_on``: True
    evaluates on the calibration data's test split, a path on that data, False not at all.
    """
    calibration = calibration or Calibration()
    model = model.to(device).eval()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    dg, groups, classifier = prunable_groups(model, spec, ignored)
    plan = None
    if target_latency is None:
        plan = make_pruning_plan(model, spec, groups, sparsity=sparsity, target_macs=target_macs, round_to=round_to)
    elif sparsity is not None or target_macs is not None or round_to != 1:
        raise ChipPruneError("--target-latency chooses the widths itself: give it without --sparsity, --target-macs or --round-to")
    timings["plan_s"] = time.perf_counter() - t0

    uses_images = needs_images(criterion)
    source = open_data(calibration.data) if uses_images or evaluate_on is True or recalibrate_bn else None
    test_source = None if evaluate_on is False else (source if evaluate_on is True else open_data(evaluate_on))
    outputs = _outputs(model, classifier)
    if test_source is not None and test_source.classes is not None and test_source.classes < outputs:  # more: refused later
        warnings.warn(
            f"{test_source.description} has {test_source.classes} classes, the model predicts {outputs}: "
            "accuracy compares the data's labels with the model's class indices, which only means something "
            "if the first classes are the same"
        )
    report: dict[str, Any] = {"model": spec.name, "criterion": criterion, "sparsity": plan.description if plan else None}
    report["data"] = source.description if source is not None else None
    report["data_path"] = data_location(calibration.data) if source is not None else None
    report["params_before"] = count_params(model)
    report["macs_before"] = count_macs(model, spec.image_size)
    test_loader = None
    if test_source is not None:
        test_loader = test_source.test_loader(spec)
        t0 = time.perf_counter()
        before = evaluate(model, test_loader, device, progress=progress, desc="test (before)")
        timings["evaluate_before_s"] = time.perf_counter() - t0
        report.update(top1_before=before["top1"], top5_before=before["top5"], test_images=before["images"])

    t0 = time.perf_counter()
    loader = None
    if uses_images:
        loader = calibration.loader(spec, source)
    scores = None
    latency_before: dict[str, float] = {}
    if plan is None:
        # A latency plan needs every group's scores first: they decide where channels are cheapest.
        scores = score_with(criterion, model, dg, groups, loader, device=device, seed=calibration.seed, progress=progress,
                            total=len(loader) if loader is not None else None)
        plan = make_latency_plan(model, spec, groups, scores, target_latency, batch_sizes=latency_batch_sizes,
                                 table=latency_table, max_shared_ratio=max_shared_ratio, device=device, progress=progress)
        report["sparsity"] = plan.description
        # The original's latency again, now: the speed-up reported is measured within this run.
        latency_before = {b: measure_latency(model, spec.image_size, int(b), device=device).min_ms for b in plan.latency}
        timings["latency_plan_s"] = time.perf_counter() - t0
    result = prune_model(
        model, spec, plan, groups, dg, classifier, loader, criterion=criterion, device=device, seed=calibration.seed,
        progress=progress, total=len(loader) if loader is not None else None, scores=scores,
    )
    timings["score_and_prune_s"] = time.perf_counter() - t0 - timings.get("latency_plan_s", 0.0)
    report["params_after"] = count_params(model)
    report["macs_after"] = count_macs(model, spec.image_size)

    if test_loader is not None:
        raw = evaluate(model, test_loader, device, progress=progress, desc="test (pruned)")
        report.update(top1_after_no_bn_recalibration=raw["top1"], top5_after_no_bn_recalibration=raw["top5"])
    report["bn_recalibrated"] = False
    if recalibrate_bn and source is not None and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        t0 = time.perf_counter()
        # The calibration images again (the same crops: augmentation is seeded per image).
        bn_loader = loader if loader is not None else calibration.loader(spec, source)
        report["bn_recalibration_images"] = recalibrate_batchnorm(model, bn_loader, device)
        report["bn_recalibrated"] = True
        timings["bn_recalibration_s"] = time.perf_counter() - t0
    if test_loader is not None:
        after = evaluate(model, test_loader, device, progress=progress, desc="test (after)")
        report.update(top1_after=after["top1"], top5_after=after["top5"])
    if latency_before:
        report["latency_ms"] = {
            b: {"before": latency_before[b], "after": measure_latency(model, spec.image_size, int(b), device=device).min_ms,
                # Predictions are at the latency table's reference speed: compare speed-ups, not milliseconds.
                "predicted": plan.latency[b]["predicted_ms"],
                "predicted_speedup": plan.latency[b]["original_ms"] / plan.latency[b]["predicted_ms"], "device": str(device)}
            for b in plan.latency
        }
    report["calibration_images"] = result.report["calibration_images"]
    report["timings"] = {k: round(v, 3) for k, v in timings.items()}
    result.report = report
    return result


def _outputs(model: nn.Module, classifier: str) -> int:
    """How many classes the model predicts: the width of its classifier layer."""
    layer = dict(model.named_modules())[classifier]
    return int(layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels)


def pruning_record(
    model: nn.Module,
    spec: ModelSpec,
    groups: list[dict[str, Any]],
    *,
    criterion: str | None,
    sparsity: str,
    classifier: str | None = None,
    round_to: int = 1,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The ``pruning.json`` that lets ``load_pruned`` rebuild ``model``: its name, input and the
    channels each group lost (no groups: the model as built)."""
    classifier = classifier or find_classifier(model.eval(), _example_input(spec, device_of(model)))
    return {
        "format": PRUNED_FORMAT,
        "chipprune_version": __version__,
        "model": spec.name,
        "num_classes": _outputs(model, classifier),
        "image_size": spec.image_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "classifier": classifier,
        "criterion": criterion,
        "sparsity": sparsity,
        "round_to": round_to,
        "notes": list(notes or []),
        "groups": groups,
    }


def save_pruned(result: PruneResult, folder: str | Path) -> Path:
    """Write ``model.safetensors``, ``pruning.json`` and ``report.json`` into ``folder`` (atomically each)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # The report goes first and last: its presence means the folder's files belong together, so a
    # previous run's report must not outlive an interruption between the two other files.
    (folder / "report.json").unlink(missing_ok=True)
    save_state_dict(result.model, folder / "model.safetensors")
    write_json(folder / "pruning.json", result.record)
    write_json(folder / "report.json", result.report)
    return folder


def read_pruned_record(folder: str | Path, model: str | None = None) -> tuple[dict[str, Any], ModelSpec]:
    """The pruning record of a pruned folder and its model's spec, checked before anything runs.

    A folder pruned from a ``package.module:function`` model names code that loading would import
    and run; it is loaded only when ``model`` repeats that name (the user vouches for the code), so a
    folder from elsewhere cannot run code by itself. Registry models need no ``model``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ChipPruneError(f"no such folder: {folder}")
    record = read_json(folder / "pruning.json")
    where = folder / "pruning.json"
    if not isinstance(record, dict) or record.get("format") != PRUNED_FORMAT:
        raise ChipPruneError(f"{where} is not a chipprune pruning record ({PRUNED_FORMAT})")
    groups = record.get("groups")
    if not isinstance(record.get("model"), str) or not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("group"), str) and isinstance(g.get("removed"), list)
        and all(isinstance(i, int) for i in g["removed"]) for g in groups
    ):
        raise ChipPruneError(f"{where} is damaged: it needs 'model' and 'groups' (each with 'group' and a list of 'removed' channels)")
    if model is not None and model != record["model"]:
        raise ChipPruneError(f"{folder} holds a pruned '{record['model']}', not '{model}'")
    if ":" in record["model"] and model is None:
        raise ChipPruneError(
            f"{folder} was pruned from '{record['model']}', your own code: loading it imports and runs that function. "
            f"If you trust this folder, confirm with --model {record['model']} (Python: model='{record['model']}')"
        )
    return record, get_model_spec(record["model"], record.get("image_size"))


def load_pruned(folder: str | Path, device: torch.device | str = "cpu", *, model: str | None = None) -> nn.Module:
    """Rebuild a pruned model from its folder: fresh model, recorded removals replayed, weights loaded.

    Nothing is unpickled. For a ``package.module:function`` model, ``model`` must repeat that name:
    the function is imported and run (see ``read_pruned_record``).
    """
    return open_pruned(folder, device, model=model)[0]


def open_pruned(
    folder: str | Path, device: torch.device | str = "cpu", *, model: str | None = None
) -> tuple[nn.Module, dict[str, Any], ModelSpec]:
    """``load_pruned``, together with the folder's pruning record and its model's spec."""
    folder = Path(folder)
    record, spec = read_pruned_record(folder, model)
    net = create_model(spec.name, record.get("num_classes")).eval()
    dg = build_graph(net, _example_input(spec))
    modules = dict(net.named_modules())
    for g in record["groups"]:
        if g["group"] not in modules:
            raise ChipPruneError(f"{folder / 'pruning.json'} names layer '{g['group']}', which {spec.name} does not have")
        prune_group(dg, net, g["group"], g["removed"])
    if not (folder / "model.safetensors").is_file():
        raise ChipPruneError(f"pruned folder {folder} has no model.safetensors")
    # The folder's two files were written together; a mismatch means one of them was changed or damaged.
    load_weights(net, folder / "model.safetensors",
                 advice="pruning.json and model.safetensors do not belong together: was one of them replaced or damaged?")
    return net.to(device).eval(), record, spec
