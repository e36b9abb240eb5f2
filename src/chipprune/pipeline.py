"""The CHIP pipeline as a library: load a model, score its channels, prune it, save and reload it.

    import chipprune
    model, spec = chipprune.load_model("cifar_resnet56", weights="bundled")
    result = chipprune.prune(model, spec, sparsity="[0.]+[0.15]*2+[0.4]*27", data="bundled")
    chipprune.save_pruned(result, "out/")
    same = chipprune.load_pruned("out/")
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import __version__
from .data import DataSource, make_loader, make_transform, open_data
from .errors import ChipPruneError
from .files import read_json, save_state_dict, write_json
from .graph import ChannelGroup, build_graph, build_groups, find_classifier, prune_group
from .metrics import count_macs, count_params, evaluate, recalibrate_batchnorm
from .models.registry import ModelSpec, create_model, get_model_spec
from .plan import PAPER_SPARSITY, make_plan, paper_feature_sources, select_channels
from .scoring import GroupScores, score_groups
from .weights import load_weights

__all__ = [
    "Calibration",
    "PruneResult",
    "load_model",
    "prunable_groups",
    "score",
    "prune",
    "save_pruned",
    "load_pruned",
]

PRUNED_FORMAT = "chipprune-pruned/1"


def load_model(name: str, weights: str | Path | None = "bundled", num_classes: int | None = None) -> tuple[nn.Module, ModelSpec]:
    """Build a registry model and load weights: ``"bundled"`` (shipped ones, if any), a file path, or None."""
    spec = get_model_spec(name)
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

    def loader(self, spec: ModelSpec, source: DataSource | None = None):
        source = source or open_data(self.data)
        dataset = source.split("train", make_transform(spec, self.augment, source.image_size))
        if len(dataset) == 0:
            raise ChipPruneError(f"{source.description}: the training split holds no images")
        return make_loader(dataset, self.batch_size, shuffle=False, limit=self.images, seed=self.seed)


def _example_input(spec: ModelSpec, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.zeros(1, 3, spec.image_size, spec.image_size, device=device)


def prunable_groups(model: nn.Module, spec: ModelSpec, ignored: list[str] | None = None):
    """Trace ``model`` and return (dependency graph, coupled channel groups, classifier name)."""
    model.eval()
    device = next(model.parameters()).device
    example = _example_input(spec, device)
    classifier = find_classifier(model, example)
    dg, groups = build_groups(model, example, [classifier, *(ignored or [])])
    paper_feature_sources(spec, groups)
    return dg, groups, classifier


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
    if groups is None:
        _, groups, _ = prunable_groups(model, spec)
    torch.manual_seed(calibration.seed)  # the augmentation draws from the global generator
    loader = calibration.loader(spec)
    return score_groups(model, groups, loader, criterion=criterion, device=device, progress=progress, total=len(loader))


@dataclass
class PruneResult:
    """A pruned model with everything needed to save it and to report on it."""

    model: nn.Module
    spec: ModelSpec
    record: dict[str, Any]
    report: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def prune(
    model: nn.Module,
    spec: ModelSpec,
    *,
    sparsity: str | None = None,
    calibration: Calibration | None = None,
    criterion: str = "chip",
    evaluate_on: str | Path | None | bool = True,
    recalibrate_bn: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> PruneResult:
    """Score, plan and remove channels of ``model`` in place; evaluate before and after when test data exists.

    ``sparsity`` is a paper string or one ratio (default: the paper's setting for the model).
    ``evaluate_on``: True evaluates on the calibration data's test split, a path on that data, False not at all.
    """
    calibration = calibration or Calibration()
    sparsity = sparsity or PAPER_SPARSITY.get(spec.name)
    if sparsity is None:
        raise ChipPruneError(f"no default sparsity for '{spec.name}'; pass one, e.g. --sparsity 0.3")
    model = model.to(device).eval()
    source = open_data(calibration.data)
    test_source = None if evaluate_on is False else (source if evaluate_on is True else open_data(evaluate_on))
    report: dict[str, Any] = {"model": spec.name, "criterion": criterion, "sparsity": sparsity, "data": source.description}
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    dg, groups, classifier = prunable_groups(model, spec)
    plan, notes = make_plan(sparsity, spec, groups, model)
    to_score = [g for g in groups if plan.get(g.name, 0.0) > 0]
    timings["trace_s"] = time.perf_counter() - t0

    report["params_before"] = count_params(model)
    report["macs_before"] = count_macs(model, spec.image_size)
    test_loader = None
    if test_source is not None:
        test_set = test_source.split("test", make_transform(spec, False, test_source.image_size))
        test_loader = make_loader(test_set, 256)
        t0 = time.perf_counter()
        before = evaluate(model, test_loader, device, progress=progress, desc="test (before)")
        timings["evaluate_before_s"] = time.perf_counter() - t0
        report.update(top1_before=before["top1"], top5_before=before["top5"], test_images=before["images"])

    t0 = time.perf_counter()
    scores = score(model, spec, calibration, groups=to_score, criterion=criterion, device=device, progress=progress) if to_score else {}
    timings["score_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    records = []
    for g in groups:
        ratio = plan.get(g.name, 0.0)
        if ratio <= 0:
            continue
        keep, remove = select_channels(scores[g.name].scores, ratio)
        prune_group(dg, model, g.name, remove)
        records.append(
            {
                "group": g.name,
                "members": g.members,
                "ratio": ratio,
                "channels_before": g.channels,
                "channels_after": len(keep),
                "removed": remove,
                "scored_maps": scores[g.name].maps,
                "split_half_spearman": round(scores[g.name].split_half_spearman, 4),
            }
        )
    timings["prune_s"] = time.perf_counter() - t0
    report["params_after"] = count_params(model)
    report["macs_after"] = count_macs(model, spec.image_size)

    if test_loader is not None:
        raw = evaluate(model, test_loader, device, progress=progress, desc="test (pruned)")
        report.update(top1_after_no_bn_recalibration=raw["top1"], top5_after_no_bn_recalibration=raw["top5"])
    report["bn_recalibrated"] = False
    if recalibrate_bn and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        t0 = time.perf_counter()
        torch.manual_seed(calibration.seed)
        report["bn_recalibration_images"] = recalibrate_batchnorm(model, calibration.loader(spec, source), device)
        report["bn_recalibrated"] = True
        timings["bn_recalibration_s"] = time.perf_counter() - t0
    if test_loader is not None:
        after = evaluate(model, test_loader, device, progress=progress, desc="test (after)")
        report.update(top1_after=after["top1"], top5_after=after["top5"])
    report["calibration_images"] = scores[to_score[0].name].images if to_score else 0
    report["timings"] = {k: round(v, 3) for k, v in timings.items()}

    record = {
        "format": PRUNED_FORMAT,
        "chipprune_version": __version__,
        "model": spec.name,
        "num_classes": _num_classes(model, classifier),
        "image_size": spec.image_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "classifier": classifier,
        "criterion": criterion,
        "sparsity": sparsity,
        "notes": notes,
        "groups": records,
    }
    return PruneResult(model, spec, record, report, notes)


def _num_classes(model: nn.Module, classifier: str) -> int:
    layer = dict(model.named_modules())[classifier]
    return int(layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels)


def save_pruned(result: PruneResult, folder: str | Path) -> Path:
    """Write ``model.safetensors``, ``pruning.json`` and ``report.json`` into ``folder`` (atomically each)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict(result.model, folder / "model.safetensors")
    write_json(folder / "pruning.json", result.record)
    # The report goes last: its presence means the folder is complete.
    write_json(folder / "report.json", result.report)
    return folder


def load_pruned(folder: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a pruned model from its folder: fresh registry model, recorded removals replayed, weights loaded."""
    folder = Path(folder)
    record = read_json(folder / "pruning.json")
    if not isinstance(record, dict) or record.get("format") != PRUNED_FORMAT:
        raise ChipPruneError(f"{folder / 'pruning.json'} is not a chipprune pruning record ({PRUNED_FORMAT})")
    spec = get_model_spec(record["model"])
    model = create_model(spec.name, record.get("num_classes")).eval()
    dg = build_graph(model, _example_input(spec))
    for g in record["groups"]:
        prune_group(dg, model, g["group"], g["removed"])
    load_weights(model, folder / "model.safetensors")
    return model.to(device).eval()
