"""The CHIP pipeline as a library: score channels, plan, prune. Each step lives in its own package;
this module only runs them in order and times them.

    import chipprune
    model, spec = chipprune.load_model("cifar_resnet56", weights="bundled")
    result = chipprune.prune(model, spec, "[0.]+[0.15]*2+[0.4]*27", calibration=chipprune.Calibration())
    chipprune.save_pruned(result, "out/")
    same = chipprune.load_pruned("out/")
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
import torch_pruning as tp

from .data.calibration import Calibration
from .data.sources import DataSource, data_location, open_data
from .evaluation.latency import compare_models
from .evaluation.metrics import count_macs, count_params, evaluate, recalibrate_batchnorm
from .io.pruned import PruneResult, pruning_record
from .models.spec import ModelSpec
from .planning.plan import Plan
from .planning.request import PlanRequest, make_plan
from .results import PruneReport
from .scoring.criteria import Criterion, get_criterion
from .scoring.streaming import GroupScores
from .surgery.apply import remove_channels
from .surgery.groups import ChannelGroup, classifier_outputs, prunable_groups

__all__ = ["score", "plan", "apply_plan", "prune_to_plan", "prune"]

Traced = tuple[tp.DependencyGraph, list[ChannelGroup], str]  # what prunable_groups returns


def score(
    model: nn.Module,
    spec: ModelSpec,
    calibration: Calibration,
    *,
    groups: list[ChannelGroup] | None = None,
    criterion: str | Criterion = "chip",
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, GroupScores]:
    """Score every channel of every prunable group (or of ``groups``) with ``criterion``."""
    criterion = get_criterion(criterion)
    dg = None  # the dependency graph is needed to find groups, and by weight criteria
    if groups is None or not criterion.needs_images:
        dg, all_groups, _ = prunable_groups(model, spec)
        groups = all_groups if groups is None else groups
    loader = calibration.loader(spec) if criterion.needs_images else None
    return criterion.score(model, groups, batches=loader, dg=dg, device=device, seed=calibration.seed, progress=progress,
                           total=len(loader) if loader is not None else None)


def plan(
    model: nn.Module,
    spec: ModelSpec,
    request: PlanRequest,
    *,
    calibration: Calibration | None = None,
    criterion: str | Criterion = "chip",
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[list[ChannelGroup], Plan]:
    """The groups and the plan for ``request``, without pruning (a dry run). Latency budgets score
    every group first, on ``calibration``; other plans need no scores."""
    _, groups, _ = prunable_groups(model, spec, list(request.ignored))
    scores = None
    if request.needs_scores:
        scores = score(model, spec, calibration or Calibration(), groups=groups, criterion=criterion, device=device, progress=progress)
    return groups, make_plan(model, spec, groups, request, scores, device=device, progress=progress)


def apply_plan(
    model: nn.Module, spec: ModelSpec, plan: Plan, scores: Mapping[str, GroupScores], traced: Traced, *, criterion: str,
) -> dict:
    """Remove the lowest-scoring channels of every group ``plan`` shrinks, in place; the pruning record."""
    dg, groups, classifier = traced
    removals = remove_channels(model, dg, groups, plan.keep, scores)
    return pruning_record(model, spec, removals, criterion=criterion, sparsity=plan.description, classifier=classifier,
                          round_to=plan.round_to, notes=plan.notes)


def prune_to_plan(
    model: nn.Module,
    spec: ModelSpec,
    plan: Plan,
    *,
    batches: Iterable | None = None,
    scores: Mapping[str, GroupScores] | None = None,
    criterion: str | Criterion = "chip",
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> PruneResult:
    """Remove channels of ``model`` in place as ``plan`` says: chosen by ``scores``, or by scoring the
    groups the plan shrinks on ``batches`` (any iterable of (images, anything) pairs; weight criteria
    need none; ``seed`` seeds the random criterion). The core of ``prune``, without data paths,
    evaluation or timing."""
    criterion = get_criterion(criterion)
    model = model.to(device)
    params, macs = count_params(model), count_macs(model, spec.image_size)
    traced = prunable_groups(model.eval(), spec, list(plan.ignored))
    if scores is None:
        shrunk = [g for g in traced[1] if plan.keep[g.name] < g.channels]
        scores = criterion.score(model, shrunk, batches=batches, dg=traced[0], device=device, seed=seed, progress=progress)
    record = apply_plan(model, spec, plan, scores, traced, criterion=criterion.name)
    report = PruneReport(spec.name, criterion.name, plan.description, None, None, params, macs, count_params(model),
                         count_macs(model, spec.image_size), next((s.images for s in scores.values()), 0))
    return PruneResult(model, spec, record, report, list(plan.notes))


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[step] = round(timings.get(step, 0.0) + time.perf_counter() - start, 3)


def prune(
    model: nn.Module,
    spec: ModelSpec,
    request: PlanRequest | str | None = None,
    *,
    calibration: Calibration | None = None,
    criterion: str | Criterion = "chip",
    evaluate_on: str | Path | bool = True,
    recalibrate_bn: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> PruneResult:
    """Plan, score and remove channels of ``model`` in place; evaluate before and after when test data exists.

    ``request``: a PlanRequest, or a sparsity string (a paper string, one ratio, a plan file);
    None: the paper's setting for the model. Latency budgets also time the original against the
    pruned model. ``evaluate_on``: True evaluates on the calibration data's test split, a path on
    that data, False not at all. BatchNorm statistics are re-estimated on the calibration images.
    """
    request = request if isinstance(request, PlanRequest) else PlanRequest(sparsity=request)
    calibration, criterion = calibration or Calibration(), get_criterion(criterion)
    model = model.to(device).eval()
    timings: dict[str, float] = {}
    with _timed(timings, "plan_s"):
        traced = prunable_groups(model, spec, list(request.ignored))
        plan = None if request.needs_scores else make_plan(model, spec, traced[1], request, device=device, progress=progress)
    source, test_source = _open_data(calibration, evaluate_on, criterion.needs_images or recalibrate_bn)
    _warn_on_fewer_classes(test_source, classifier_outputs(model, traced[2]))
    report = PruneReport(
        spec.name, criterion.name, plan.description if plan else "", source.description if source else None,
        data_location(calibration.data) if source else None, count_params(model), count_macs(model, spec.image_size),
    )
    test_loader = test_source.test_loader(spec) if test_source is not None else None
    if test_loader is not None:
        with _timed(timings, "evaluate_before_s"):
            before = evaluate(model, test_loader, device, progress=progress, desc="test (before)")
        report.top1_before, report.top5_before, report.test_images = before["top1"], before["top5"], before["images"]
    loader = calibration.loader(spec, source) if criterion.needs_images else None
    original = copy.deepcopy(model) if request.needs_scores else None  # timed against the pruned model
    scores = None
    if plan is None:
        # A latency plan needs every group's scores first: they decide where channels are cheapest.
        with _timed(timings, "latency_plan_s"):
            scores = _score_groups(criterion, model, traced, traced[1], loader, calibration.seed, device, progress)
            plan = make_plan(model, spec, traced[1], request, scores, device=device, progress=progress)
    report.sparsity = plan.description
    with _timed(timings, "score_and_prune_s"):
        shrunk = [g for g in traced[1] if plan.keep[g.name] < g.channels]
        if scores is None:
            scores = _score_groups(criterion, model, traced, shrunk, loader, calibration.seed, device, progress)
        record = apply_plan(model, spec, plan, scores, traced, criterion=criterion.name)
    report.params_after, report.macs_after = count_params(model), count_macs(model, spec.image_size)
    report.calibration_images = next((scores[g.name].images for g in shrunk), 0)
    _evaluate_after(model, spec, report, test_loader, source if recalibrate_bn else None, loader, calibration, device, progress, timings)
    if original is not None:
        report.latency_ms = compare_models(original, model, spec.image_size, plan.latency, device=device, progress=progress)
        report.predicted_ms = plan.latency
        report.predicted_speedup = {b: p["original_ms"] / p["predicted_ms"] for b, p in plan.latency.items()}
    report.timings = timings
    return PruneResult(model, spec, record, report, list(plan.notes))


def _score_groups(criterion: Criterion, model: nn.Module, traced: Traced, groups: list[ChannelGroup], loader, seed: int,
                  device: torch.device | str, progress: bool) -> dict[str, GroupScores]:
    return criterion.score(model, groups, batches=loader, dg=traced[0], device=device, seed=seed, progress=progress,
                           total=len(loader) if loader is not None else None)


def _open_data(calibration: Calibration, evaluate_on: str | Path | bool, needs_images: bool) -> tuple[DataSource | None, DataSource | None]:
    """The calibration data (when anything reads it) and the data to evaluate on (None: no evaluation)."""
    source = open_data(calibration.data) if needs_images or evaluate_on is True else None
    if evaluate_on is False:
        return source, None
    return source, source if evaluate_on is True else open_data(evaluate_on)


def _warn_on_fewer_classes(test_source: DataSource | None, outputs: int) -> None:
    # More classes than the model predicts are refused later, by the evaluation.
    if test_source is not None and test_source.classes is not None and test_source.classes < outputs:
        warnings.warn(
            f"{test_source.description} has {test_source.classes} classes, the model predicts {outputs}: "
            "accuracy compares the data's labels with the model's class indices, which only means something "
            "if the first classes are the same"
        )


def _evaluate_after(model, spec, report: PruneReport, test_loader, bn_source: DataSource | None, loader, calibration: Calibration,
                    device, progress: bool, timings: dict[str, float]) -> None:
    """Accuracy as pruned, BatchNorm statistics re-estimated on the calibration images, accuracy again."""
    if test_loader is not None:
        raw = evaluate(model, test_loader, device, progress=progress, desc="test (pruned)")
        report.top1_after_no_bn_recalibration, report.top5_after_no_bn_recalibration = raw["top1"], raw["top5"]
    if bn_source is not None and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        with _timed(timings, "bn_recalibration_s"):
            # The calibration images again (the same crops: augmentation is seeded per image).
            bn_loader = loader if loader is not None else calibration.loader(spec, bn_source)
            report.bn_recalibration_images = recalibrate_batchnorm(model, bn_loader, device)
            report.bn_recalibrated = True
    if test_loader is not None:
        after = evaluate(model, test_loader, device, progress=progress, desc="test (after)")
        report.top1_after, report.top5_after = after["top1"], after["top5"]
