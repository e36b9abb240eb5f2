"""Pilot mode: how far can a model be compressed on the user's own data before accuracy falls?

For each compression level (a MAC budget) the pilot plans, prunes a copy of the model with scores
computed once, re-estimates BatchNorm statistics, optionally fine-tunes briefly, then measures test
accuracy and latency against the original. Accuracy is compared with the unpruned model *on the
same images* (paired), which gives a much tighter interval for the drop than two separate
accuracies would (see stats.py). Finished levels are kept, so a rerun resumes.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..data.calibration import Calibration
from ..data.sources import DataSource, data_location, open_data
from ..errors import ChipPruneError
from ..evaluation.latency import compare_models
from ..evaluation.metrics import correct_flags, count_macs, count_params, recalibrate_batchnorm
from ..io.atomic import atomic_write_bytes, write_json
from ..models.spec import ModelSpec
from ..pipeline import apply_plan
from ..planning.request import PlanRequest, make_plan
from ..reporting.markdown import pilot_markdown
from ..reporting.plots import plot_pilot
from ..results import PilotBaseline, PilotLevel, PilotReport
from ..runtime import Dist
from ..scoring.criteria import get_criterion
from ..scoring.streaming import GroupScores
from ..surgery.groups import prunable_groups
from ..training.loop import TrainConfig, fit
from ..training.recipes import recipe_with
from .folder import PilotFolder, weights_digest
from .stats import paired_drop_interval, recommend, wilson_interval

__all__ = ["PilotSettings", "run_pilot", "test_loader_for"]


@dataclass(frozen=True)
class PilotSettings:
    """What a pilot sweeps and how it judges: MAC levels (fractions), fine-tuning per level, the drop
    accepted (points) at a confidence, width rounding, the throughput batch, the criterion."""

    levels: tuple[float, ...] = (0.8, 0.65, 0.5, 0.35)
    finetune_epochs: int = 0
    max_drop: float = 1.0
    confidence: float = 0.95
    round_to: int = 1
    throughput_batch: int = 64
    criterion: str = "chip"

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(sorted({float(lv) for lv in self.levels}, reverse=True)))
        if not self.levels or any(not 0 < lv < 1 for lv in self.levels):
            raise ChipPruneError(f"pilot levels are MAC fractions in (0, 1); got {list(self.levels)}")
        if not 0 < self.confidence < 1:
            raise ChipPruneError(f"confidence must lie in (0, 1), e.g. 0.95; got {self.confidence}")
        if self.throughput_batch < 1 or self.finetune_epochs < 0 or self.round_to < 1:
            raise ChipPruneError("throughput batch and --round-to must be at least 1, fine-tuning epochs at least 0")
        get_criterion(self.criterion)


def test_loader_for(spec: ModelSpec, source: DataSource) -> DataLoader:
    loader = source.test_loader(spec)
    if len(loader.dataset) == 0:
        raise ChipPruneError(f"{source.description} has no test images; the pilot needs held-out images to measure accuracy")
    return loader


def run_pilot(
    model: nn.Module,
    spec: ModelSpec,
    data: str | Path | None,
    out: str | Path,
    settings: PilotSettings = PilotSettings(),
    *,
    calibration: Calibration | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> PilotReport:
    """Sweep the MAC levels of ``settings``; write pilot.json, pilot.md, pilot.png into ``out``.
    For classifiers on labelled data; ``pilot.sweep_any`` takes any model and your own measure."""
    spec.require_classifier("the pilot")
    calibration = calibration or Calibration(data=data)
    source, model = open_data(data), model.to(device).eval()
    test_loader = test_loader_for(spec, source)  # before anything is written: no test images, no folder
    folder = PilotFolder(out)
    folder.claim({
        "model": spec.name, "image_size": spec.image_size, "weights_sha256": weights_digest(model), "data": data_location(data),
        "calibration_images": calibration.images, "calibration_batch_size": calibration.batch_size,
        "calibration_seed": calibration.seed, "calibration_augment": calibration.augment, "device": str(torch.device(device)),
        **{k: v for k, v in asdict(settings).items() if k not in ("levels", "max_drop")},
    })
    base_flags = correct_flags(model, test_loader, device)
    scores = _scores(model, spec, folder, settings, calibration, source, device, progress)
    levels = []
    for target in settings.levels:
        level = folder.level(target)
        if level is None:
            level = _measure_level(model, spec, target, scores, settings, calibration, source, test_loader, base_flags, folder, device,
                                   progress)
            folder.save_level(level)
            if progress:
                print(f"level {target:.0%} of MACs: top-1 {level.top1:.2f}% (drop {level.drop:+.2f}, up to {level.drop_high:+.2f}), "
                      f"{level.latency.after_ms:.2f} ms")
        levels.append(level)
    baseline = PilotBaseline(
        count_params(model), count_macs(model, spec.example_input()), 100 * float(base_flags.double().mean()),
        wilson_interval(int(base_flags.sum()), base_flags.numel(), settings.confidence), base_flags.numel(), settings.throughput_batch,
        statistics.median(lv.latency.before_ms for lv in levels), statistics.median(lv.throughput.before_ms for lv in levels),
    )
    report = PilotReport(spec.name, source.description, settings.criterion, settings.confidence, settings.max_drop, baseline, levels,
                         recommend(levels, settings.max_drop))
    write_json(folder.out / "pilot.json", report.to_json())
    plot_pilot(folder.out / "pilot.png", report)
    atomic_write_bytes(folder.out / "pilot.md", pilot_markdown(report).encode())
    return report


def _scores(model, spec, folder: PilotFolder, settings: PilotSettings, calibration: Calibration, source: DataSource, device,
            progress: bool) -> dict[str, GroupScores]:
    """Every group's scores: computed once, saved, reused by every level (and by a resumed pilot)."""
    dg, groups, _ = prunable_groups(model, spec)
    scores = folder.scores(groups)
    if scores is None:
        criterion = get_criterion(settings.criterion)
        loader = calibration.loader(spec, source) if criterion.needs_images else None
        scores = criterion.score(model, groups, batches=loader, dg=dg, device=device, seed=calibration.seed, progress=progress)
        folder.save_scores(scores)
    return scores


def _measure_level(model, spec, target: float, scores, settings: PilotSettings, calibration: Calibration, source: DataSource,
                   test_loader: DataLoader, base_flags: torch.Tensor, folder: PilotFolder, device, progress: bool) -> PilotLevel:
    """Prune a copy to ``target`` of the MACs, re-estimate BatchNorm, fine-tune if asked, measure."""
    candidate = copy.deepcopy(model)
    traced = prunable_groups(candidate, spec)
    plan = make_plan(candidate, spec, traced[1], PlanRequest(target_macs=target, round_to=settings.round_to))
    apply_plan(candidate, spec, plan, scores, traced, criterion=settings.criterion)
    recalibrate_batchnorm(candidate, calibration.loader(spec, source), device)
    if settings.finetune_epochs > 0:
        recipe = recipe_with("chip-cifar" if spec.image_size <= 64 else "chip-imagenet", epochs=settings.finetune_epochs, warmup_epochs=0)
        config = TrainConfig(recipe, folder.finetune_dir(target), seed=calibration.seed, val_fraction=0.0, progress=False)
        fit(candidate, spec, source, config, Dist(device=torch.device(device)))
    candidate.eval()
    flags = correct_flags(candidate, test_loader, device)
    drop, drop_low, drop_high = paired_drop_interval(base_flags, flags, settings.confidence)
    low, high = wilson_interval(int(flags.sum()), flags.numel(), settings.confidence)
    latency = compare_models(model, candidate, spec, [1, settings.throughput_batch], device=device, progress=progress)
    return PilotLevel(
        target, count_params(candidate), count_macs(candidate, spec.example_input()), 100 * float(flags.double().mean()), low, high,
        drop, drop_low, drop_high, settings.finetune_epochs, latency["1"], latency[str(settings.throughput_batch)],
    )

