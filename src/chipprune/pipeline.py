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
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
import torch.utils._pytree as pytree
import torch_pruning as tp

from .data.calibration import Calibration, calibration_batches
from .data.sources import DataSource, data_location, open_data
from .evaluation.latency import compare_models
from .errors import ChipPruneError
from .evaluation.metrics import call_evaluate, count_macs, count_params, recalibrate_batchnorm
from .evaluation.metrics import evaluate as evaluate_accuracy
from .io.pruned import PruneResult, pruning_record
from .models.spec import ModelSpec
from .planning.plan import Plan
from .planning.request import PlanRequest, make_plan
from .results import PruneReport
from .runtime import device_of
from .scoring.criteria import Criterion, get_criterion
from .scoring.streaming import GroupScores
from .surgery.apply import remove_channels
from .surgery.groups import ChannelGroup, classifier_outputs, prunable_groups

__all__ = ["score", "plan", "apply_plan", "prune_to_plan", "prune"]

Traced = tuple[tp.DependencyGraph, list[ChannelGroup], list[str]]  # what prunable_groups returns


def score(
    model: nn.Module,
    spec: ModelSpec,
    calibration: Calibration | Iterable,
    *,
    groups: list[ChannelGroup] | None = None,
    criterion: str | Criterion = "chip",
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, GroupScores]:
    """Score every channel of every prunable group (or of ``groups``) with ``criterion`` on
    ``calibration``: a Calibration, or an iterable of model inputs."""
    criterion = get_criterion(criterion)
    dg = None  # the dependency graph is needed to find groups, and by weight criteria
    if groups is None or not criterion.needs_images:
        dg, all_groups, _ = prunable_groups(model, spec)
        groups = all_groups if groups is None else groups
    batches = calibration_batches(calibration, spec) if criterion.needs_images else None
    return criterion.score(model, groups, batches=batches, dg=dg, device=device, seed=_seed(calibration), progress=progress,
                           total=_length(batches))


def plan(
    model: nn.Module,
    spec: ModelSpec,
    request: PlanRequest,
    *,
    calibration: Calibration | Iterable | None = None,
    criterion: str | Criterion = "chip",
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[list[ChannelGroup], Plan]:
    """The groups and the plan for ``request``, without pruning (a dry run). Latency budgets score
    every group first, on ``calibration``; other plans need no scores."""
    _, groups, _ = prunable_groups(model, spec, list(request.ignored))
    scores = None
    if request.needs_scores:
        scores = score(model, spec, Calibration() if calibration is None else calibration, groups=groups, criterion=criterion, device=device, progress=progress)
    return groups, make_plan(model, spec, groups, request, scores, device=device, progress=progress)


def apply_plan(
    model: nn.Module, spec: ModelSpec, plan: Plan, scores: Mapping[str, GroupScores], traced: Traced, *, criterion: str,
) -> dict:
    """Remove the lowest-scoring channels of every group ``plan`` shrinks, in place; the pruning record.
    The pruned model must still run and return outputs of the same form as before."""
    dg, groups, outputs = traced
    before = _output_form(model, spec)
    removals = remove_channels(model, dg, groups, plan.keep, scores)
    try:
        after = _output_form(model, spec)
    except Exception as exc:  # noqa: BLE001 - whatever the broken model raises, the user needs the same advice
        raise ChipPruneError(f"the pruned model no longer runs ({type(exc).__name__}: {str(exc)[:300]}): Torch-Pruning followed "
                             "its channel coupling wrongly. Keep the layers involved with --ignore (Python: PlanRequest(ignored=...))") from None
    if after != before:
        raise ChipPruneError(f"pruning changed what the model returns ({before} before, {after} after): an output layer was not "
                             "recognised. Keep it with --ignore (Python: PlanRequest(ignored=...))")
    return pruning_record(model, spec, removals, criterion=criterion, sparsity=plan.description, outputs=outputs,
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
    params, macs = count_params(model), count_macs(model, spec.example_input())
    traced = prunable_groups(model.eval(), spec, list(plan.ignored))
    if scores is None:
        shrunk = [g for g in traced[1] if plan.keep[g.name] < g.channels]
        scores = criterion.score(model, shrunk, batches=batches, dg=traced[0], device=device, seed=seed, progress=progress)
    record = apply_plan(model, spec, plan, scores, traced, criterion=criterion.name)
    report = PruneReport(spec.name, criterion.name, plan.description, None, None, params, macs, count_params(model),
                         count_macs(model, spec.example_input()), next((s.images for s in scores.values()), 0))
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
    calibration: Calibration | Iterable | None = None,
    criterion: str | Criterion = "chip",
    evaluate_on: str | Path | bool = True,
    evaluate: Callable[[nn.Module], float] | None = None,
    recalibrate_bn: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> PruneResult:
    """Plan, score and remove channels of ``model`` in place; evaluate before and after.

    ``request``: a PlanRequest, or a sparsity string (a paper string, one ratio, a plan file);
    None: the paper's setting for the model. Latency budgets also time the original against the
    pruned model. ``calibration``: a Calibration (images from a data path), or any iterable of model
    inputs, exactly as ``model(...)`` takes them (a list or a DataLoader: it is read twice).
    ``evaluate``: your own measure, ``evaluate(model) -> float``, taken before and after, for any task.
    Classifiers are also evaluated on a test split: ``evaluate_on`` True takes the calibration data's,
    a path that data, False none. BatchNorm statistics are re-estimated on the calibration batches.
    """
    request = request if isinstance(request, PlanRequest) else PlanRequest(sparsity=request)
    calibration, criterion = Calibration() if calibration is None else calibration, get_criterion(criterion)
    model = model.to(device).eval()
    timings: dict[str, float] = {}
    with _timed(timings, "plan_s"):
        traced = prunable_groups(model, spec, list(request.ignored))
        plan = None if request.needs_scores else make_plan(model, spec, traced[1], request, device=device, progress=progress)
    source, test_source = _open_data(calibration, spec, evaluate_on, criterion.needs_images or recalibrate_bn)
    if test_source is not None:
        _warn_on_fewer_classes(test_source, classifier_outputs(model, traced[2][-1]))
    report = PruneReport(
        spec.name, criterion.name, plan.description if plan else "", _data_description(calibration, source),
        data_location(calibration.data) if source else None, count_params(model), count_macs(model, spec.example_input()),
    )
    test_loader = test_source.test_loader(spec) if test_source is not None else None
    report.not_measured = _why_not_measured(spec, test_loader, evaluate)
    _evaluate_model(model, report, "before", test_loader, evaluate, device, progress, timings)
    batches = calibration_batches(calibration, spec, source) if criterion.needs_images or recalibrate_bn else None
    original = copy.deepcopy(model) if request.needs_scores else None  # timed against the pruned model
    scores = None
    if plan is None:
        # A latency plan needs every group's scores first: they decide where channels are cheapest.
        with _timed(timings, "latency_plan_s"):
            scores = _score_groups(criterion, model, traced, traced[1], batches, _seed(calibration), device, progress)
            plan = make_plan(model, spec, traced[1], request, scores, device=device, progress=progress)
    report.sparsity = plan.description
    with _timed(timings, "score_and_prune_s"):
        shrunk = [g for g in traced[1] if plan.keep[g.name] < g.channels]
        if scores is None:
            scores = _score_groups(criterion, model, traced, shrunk, batches, _seed(calibration), device, progress)
        record = apply_plan(model, spec, plan, scores, traced, criterion=criterion.name)
    report.params_after, report.macs_after = count_params(model), count_macs(model, spec.example_input())
    report.calibration_images = next((scores[g.name].images for g in shrunk), 0)
    _recalibrate_and_evaluate(model, report, test_loader, batches if recalibrate_bn else None, evaluate, device, progress, timings)
    if original is not None:  # a latency budget: the promise is checked by timing
        report.latency_ms = compare_models(original, model, spec, plan.latency, device=device, progress=progress)
        report.predicted_ms, report.predicted_speedup = plan.latency, {b: p["original_ms"] / p["predicted_ms"] for b, p in plan.latency.items()}
    report.timings = timings
    return PruneResult(model, spec, record, report, list(plan.notes))


def _output_form(model: nn.Module, spec: ModelSpec) -> str:
    """The structure of the model's outputs with each tensor's shape past its first dimension (a
    detector's number of boxes varies with the weights; what each box holds must not)."""
    with torch.no_grad():
        out = model.eval()(spec.example_input(device_of(model)))
    leaves, structure = pytree.tree_flatten(out)
    return f"{structure}; {[tuple(t.shape[1:]) if isinstance(t, torch.Tensor) else type(t).__name__ for t in leaves]}"


def _seed(calibration: Calibration | Iterable) -> int:
    return calibration.seed if isinstance(calibration, Calibration) else 0


def _length(batches) -> int | None:
    try:
        return len(batches)
    except TypeError:  # none, or an iterable without a length: the progress bar counts without a total
        return None


def _score_groups(criterion: Criterion, model: nn.Module, traced: Traced, groups: list[ChannelGroup], batches, seed: int,
                  device: torch.device | str, progress: bool) -> dict[str, GroupScores]:
    return criterion.score(model, groups, batches=batches, dg=traced[0], device=device, seed=seed, progress=progress,
                           total=_length(batches))


def _open_data(calibration: Calibration | Iterable, spec: ModelSpec, evaluate_on: str | Path | bool,
               needs_images: bool) -> tuple[DataSource | None, DataSource | None]:
    """The calibration data (when anything reads it and it comes from a data path) and the data to
    evaluate a classifier on (None: no such evaluation)."""
    own_data = isinstance(calibration, Calibration)
    source = open_data(calibration.data) if own_data and (needs_images or evaluate_on is True) else None
    if evaluate_on is False or spec.task != "classification":
        return source, None
    if evaluate_on is True:
        return source, source if source is not None and source.has_test else None
    return source, open_data(evaluate_on)


def _warn_on_fewer_classes(test_source: DataSource, outputs: int) -> None:
    # More classes than the model predicts are refused later, by the evaluation.
    if test_source.classes is not None and test_source.classes < outputs:
        warnings.warn(
            f"{test_source.description} has {test_source.classes} classes, the model predicts {outputs}: "
            "accuracy compares the data's labels with the model's class indices, which only means something "
            "if the first classes are the same"
        )


def _data_description(calibration: Calibration | Iterable, source: DataSource | None) -> str | None:
    return source.description if source is not None else None if isinstance(calibration, Calibration) else "your calibration batches"


def _why_not_measured(spec: ModelSpec, test_loader, evaluate: Callable | None) -> str | None:
    if test_loader is not None or evaluate is not None:
        return None
    if spec.task != "classification":
        return (f"a {spec.task} model: chipprune measures accuracy for classifiers only; "
                "give your metric as evaluate=... in the Python API (docs/ANY_MODEL.md)")
    return "no labelled test images (data with a test split: an ImageFolder with test/ or val/ class folders, or CIFAR-10)"


def _evaluate_model(model: nn.Module, report: PruneReport, when: str, test_loader, evaluate: Callable | None,
                    device, progress: bool, timings: dict[str, float]) -> None:
    """Top-1/top-5 on the test split and the user's own measure, ``when`` "before" or "after" pruning."""
    if test_loader is None and evaluate is None:
        return
    with _timed(timings, f"evaluate_{when}_s"):
        if test_loader is not None:
            result = evaluate_accuracy(model, test_loader, device, progress=progress, desc=f"test ({when})")
            setattr(report, f"top1_{when}", result["top1"])
            setattr(report, f"top5_{when}", result["top5"])
            report.test_images = result["images"]
        if evaluate is not None:
            setattr(report, f"metric_{when}", call_evaluate(evaluate, model))


def _recalibrate_and_evaluate(model: nn.Module, report: PruneReport, test_loader, bn_batches, evaluate: Callable | None,
                              device, progress: bool, timings: dict[str, float]) -> None:
    """Accuracy as pruned, BatchNorm statistics re-estimated on the calibration batches, quality again."""
    if test_loader is not None:
        raw = evaluate_accuracy(model, test_loader, device, progress=progress, desc="test (pruned)")
        report.top1_after_no_bn_recalibration, report.top5_after_no_bn_recalibration = raw["top1"], raw["top5"]
    if bn_batches is not None and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        with _timed(timings, "bn_recalibration_s"):
            # The calibration batches again (the same crops: augmentation is seeded per image).
            report.bn_recalibration_images = recalibrate_batchnorm(model, bn_batches, device)
            report.bn_recalibrated = True
    _evaluate_model(model, report, "after", test_loader, evaluate, device, progress, timings)
