"""A pilot for any model: compression levels against the user's own measure.

``run_pilot`` needs a classifier and labelled images (it gives paired accuracy intervals and a
recommendation). A detector, a segmenter or any model with its own metric gets this sweep instead:
the channels are scored once on the calibration batches, then for each MAC level a copy is pruned,
its BatchNorm statistics re-estimated, optionally fine-tuned by the user's function, and measured by
``evaluate(model) -> float``. chipprune cannot know the uncertainty of the user's metric: the table
says so, and a user who wants intervals evaluates on more data or repeats with other seeds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..data.calibration import Calibration, calibration_batches
from ..errors import ChipPruneError
from ..evaluation.metrics import call_evaluate, count_macs, count_params, recalibrate_batchnorm
from ..models.spec import ModelSpec
from ..pipeline import apply_plan, score
from ..planning.request import PlanRequest, make_plan
from ..reporting.plots import plot_sweep
from ..scoring.criteria import Criterion, get_criterion
from ..surgery.groups import prunable_groups

__all__ = ["SweepPoint", "sweep_any", "sweep_table"]


@dataclass
class SweepPoint:
    """One level of a sweep: the fraction of MACs asked for (1.0: the unpruned model) and what it gave."""

    target: float
    params: int
    macs: int
    metric: float
    change: float  # metric minus the unpruned model's


def sweep_any(
    model: nn.Module,
    spec: ModelSpec,
    calibration: Calibration | Iterable,
    evaluate: Callable[[nn.Module], float],
    *,
    levels: Sequence[float] = (0.75, 0.5, 0.35, 0.25),
    finetune: Callable[[nn.Module], object] | None = None,
    criterion: str | Criterion = "chip",
    plot: str | Path | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> list[SweepPoint]:
    """Prune copies of ``model`` (untouched) to each fraction of its MACs in ``levels`` and measure
    each with ``evaluate``; ``finetune(copy)`` runs first when given (``finetune_module`` with your
    loss, for instance). ``calibration``: a Calibration or an iterable of model inputs (read once to
    score and once per level for BatchNorm). ``plot``: a PNG of the metric against MACs.
    Returns the unpruned model's point first, then one per level."""
    if not levels or any(not 0 < level < 1 for level in levels):
        raise ChipPruneError(f"levels must be fractions of the MACs between 0 and 1, got {list(levels)}")
    criterion = get_criterion(criterion)
    model = model.to(device).eval()
    scores = score(model, spec, calibration, criterion=criterion, device=device, progress=progress)
    batches = calibration_batches(calibration, spec)  # read again for each level's BatchNorm
    base = call_evaluate(evaluate, model)
    points = [SweepPoint(1.0, count_params(model), count_macs(model, spec.example_input()), base, 0.0)]
    for level in sorted(levels, reverse=True):
        candidate = copy.deepcopy(model)
        traced = prunable_groups(candidate, spec)
        plan = make_plan(candidate, spec, traced[1], PlanRequest(target_macs=level), device=device, progress=False)
        apply_plan(candidate, spec, plan, scores, traced, criterion=criterion.name)
        recalibrate_batchnorm(candidate, batches, device)
        if finetune is not None:
            finetune(candidate)
        metric = call_evaluate(evaluate, candidate)
        points.append(SweepPoint(level, count_params(candidate), count_macs(candidate, spec.example_input()), metric, metric - base))
        if progress:
            print(f"level {level:.0%} of MACs: metric {metric:.4g} ({metric - base:+.4g})")
    if plot is not None:
        plot_sweep(Path(plot), [(p.macs, p.metric) for p in points], spec.name)
    return points


def sweep_table(points: Sequence[SweepPoint], metric: str = "metric") -> str:
    """The sweep as a text table, with what its figures are and are not."""
    lines = [f"{'MACs asked':>11}{'params':>14}{'MACs':>16}{metric:>12}{'change':>10}"]
    for p in points:
        asked = "original" if p.target == 1.0 else f"{p.target:.0%}"
        lines.append(f"{asked:>11}{p.params:>14,}{p.macs:>16,}{p.metric:>12.4g}{p.change:>+10.4g}")
    lines.append(f"{metric}: your evaluate function's value, as it returned it; its uncertainty is yours to judge "
                 "(chipprune gives intervals for classifiers' top-1 only)")
    return "\n".join(lines)
