"""Plans that aim at a latency: how many channels each group keeps so that the predicted latency
meets a budget while as little channel independence as possible is removed.

The search is greedy. It starts from the full model and repeatedly takes the move, over all groups
and a window of smaller widths per group, that saves the most predicted milliseconds per unit of
accuracy cost; it stops as soon as the prediction meets the budget. CHIP still decides *which*
channels go; the search decides *how many*. Widths come from a grid (every channel for groups of up
to 16, every C/16-th above), and the latency table decides which of them are worth having: a move
must save time, so a width that is no faster than the current one is jumped over (the search looks
several grid steps down), never taken.

Cost of a move (the accuracy proxy, see removal_mass): the share of a group's channel independence
that the move removes, on a convex scale, counted once for every feature map the group's channels
appear in. Groups read in several maps (residual streams) lose at most 30% of their channels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..errors import ChipPruneError
from ..models.spec import ModelSpec
from ..scoring.streaming import GroupScores
from ..surgery.apply import select_top
from ..surgery.groups import ChannelGroup
from .latency_table import LatencyModel, LatencyTable
from .plan import Plan, plan_from_keep

__all__ = [
    "LatencyPredictor", "BlendedLatency", "LatencyPlan", "parse_latency_target", "removal_mass", "candidate_widths",
    "plan_for_latency", "plan_for_latency_budget",
]

RETIMED_SEARCHES = 3  # searches at most, each followed by timing the plan's layers again
FLAT_TIMINGS = 0.9  # a search stuck above this fraction of the original: the layer timings say little about widths
# Other work using at least this fraction of the cores (load average beyond our own threads) makes a
# near miss within the timing noise the noise's fault. On a quiet machine the layer timings' intervals
# are still wide (5 short rounds each: +-13% median on the idle 2-core VM), and a near miss there is
# the target's (or the caps').
BUSY_LOAD = 0.5


class LatencyPredictor(Protocol):
    """What the search needs from a latency model: LatencyModel (milliseconds at one batch size),
    BlendedLatency (fractions of the original, averaged over batch sizes), or a constructed table."""

    @property
    def original(self) -> float: ...

    def layers_of(self, group: str) -> list[str]: ...

    def layer_cost(self, layer: str, keep: Mapping[str, int]) -> float: ...

    def predict(self, keep: Mapping[str, int]) -> float: ...


class BlendedLatency:
    """Several latency models (e.g. batch 1 and batch 64) as one: each prediction is the mean over
    the models of (predicted / original latency), so the unpruned model scores 1.0."""

    def __init__(self, models: list[LatencyPredictor]) -> None:
        if not models:
            raise ChipPruneError("no latency model to blend")
        self.models = models

    @property
    def original(self) -> float:
        return 1.0

    def layers_of(self, group: str) -> list[str]:
        return self.models[0].layers_of(group)

    def layer_cost(self, layer: str, keep: Mapping[str, int]) -> float:
        return sum(m.layer_cost(layer, keep) / m.original for m in self.models) / len(self.models)

    def predict(self, keep: Mapping[str, int]) -> float:
        return sum(m.predict(keep) / m.original for m in self.models) / len(self.models)

    def timing_noise(self) -> float | None:
        noises = [n for n in (_timing_noise(m) for m in self.models) if n is not None]
        return max(noises) if noises else None


def _timing_noise(predictor: LatencyPredictor) -> float | None:
    """The predictor's relative timing uncertainty, when it knows it (timed layers do; a constructed table does not)."""
    noise = getattr(predictor, "timing_noise", None)
    return noise() if callable(noise) else None


def _load_average() -> float | None:
    """The machine's one-minute load average, or None where the system has none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _other_load() -> float:
    """The machine's load beyond this process's own math threads, as a fraction of its cores (0.0: nothing else runs)."""
    load = _load_average()
    return 0.0 if load is None else max(0.0, load - torch.get_num_threads()) / (os.cpu_count() or 1)


def _load_text() -> str:
    """The machine's load, a plain fact for messages about noisy timings."""
    load = _load_average()
    return "load unknown" if load is None else f"load average {load:.1f} on {os.cpu_count()} cores"


@dataclass
class LatencyPlan:
    keep: dict[str, int]
    predicted: float  # in the predictor's unit (ms, or a fraction of the original)
    original: float
    target: float
    cost: float  # accuracy proxy removed, see removal_mass
    steps: list[str] = field(default_factory=list)  # one line per move, for the curious


def parse_latency_target(value: str | float) -> tuple[str, float]:
    """``0.5`` -> ("fraction", 0.5); ``"12ms"`` or ``"12 ms"`` -> ("ms", 12.0)."""
    text = str(value).strip().lower()
    try:
        if text.endswith("ms"):
            number, kind = float(text[:-2]), "ms"
        else:
            number, kind = float(text), "fraction"
    except ValueError:
        raise ChipPruneError(f"--target-latency must be a fraction like 0.5 or milliseconds like 12ms, got '{value}'") from None
    if not math.isfinite(number) or number <= 0 or (kind == "fraction" and number >= 1):
        raise ChipPruneError(f"--target-latency {value}: give a fraction in (0, 1) of the original latency, or a positive time like 12ms")
    return kind, number


def removal_mass(group: ChannelGroup, scores: GroupScores) -> dict[int, float]:
    """Accuracy cost of every possible width of ``group``: {channels kept: cost}.

    With r the fraction of the group's CI removed (lowest-scoring channels first, as pruning
    will), the cost is -log(1 - r) per feature map the channels appear in: about r while little
    goes, and without bound as a layer loses everything, so no layer is emptied to save time.
    """
    weight = max(1, len(scores.maps))
    values = scores.scores.double().clamp_min(0)
    total = float(values.sum())
    step = group.channel_groups if group.channels % group.channel_groups == 0 else 1
    costs = {}
    for keep in range(step, group.channels + 1, step):
        _, removed = select_top(scores.scores, keep, group.channel_groups)
        kept_share = 1.0 - float(values[removed].sum()) / total if total > 0 else 1.0 - len(removed) / group.channels
        costs[keep] = -math.log(max(kept_share, 1e-12)) * weight
    return costs


def candidate_widths(group: ChannelGroup, max_ratio: float) -> list[int]:
    """Widths the search may give ``group``, ascending, ending at the full width: multiples of the
    block size for grouped convs, every channel up to 16 per block, then every block/16-th."""
    blocks = group.channel_groups if group.channels % group.channel_groups == 0 else 1
    per_block = group.channels // blocks
    grain = max(1, per_block // 16)
    smallest = max(1, math.ceil(per_block * (1.0 - max_ratio)))
    units = sorted({u for u in range(per_block, 0, -grain) if u >= smallest} | {per_block})
    return [u * blocks for u in units]


def plan_for_latency(
    groups: list[ChannelGroup],
    scores: Mapping[str, GroupScores],
    predictor: LatencyPredictor,
    target: float,
    *,
    max_ratio: float = 0.7,
    max_shared_ratio: float = 0.3,
    window: int = 4,
    progress: bool = False,
    start_keep: Mapping[str, int] | None = None,
) -> LatencyPlan:
    """Channels per group so that ``predictor`` says at most ``target`` (its unit), at little accuracy cost.

    ``max_ratio``: no group loses more than this fraction of its channels (0.7: the largest ratio the
    paper uses); ``max_shared_ratio`` for groups read in several feature maps (residual streams,
    concatenated features): their channels carry every block's output, and cutting them hard cost
    most of the accuracy in our measurements (docs/LATENCY.md). ``window``: how many
    smaller grid widths a single move may jump (lets the search cross widths that save nothing).
    ``start_keep``: go on from these widths (a plan whose layers were timed again) instead of the full model.
    """
    if not (0 < max_ratio < 1 and 0 < max_shared_ratio < 1):
        raise ChipPruneError(f"max_ratio and max_shared_ratio must be in (0, 1), got {max_ratio}, {max_shared_ratio}")
    prunable = [g for g in groups if g.name in scores]
    keep = {g.name: g.channels for g in groups}
    widths = {g.name: candidate_widths(g, max_shared_ratio if len(scores[g.name].maps) > 1 else max_ratio) for g in prunable}
    mass = {g.name: removal_mass(g, scores[g.name]) for g in prunable}
    start = predictor.predict(keep)  # the unpruned model: the unit of fractions below
    plan = LatencyPlan(dict(keep), start, start, target, 0.0)
    if start_keep is not None:
        keep.update(start_keep)
        plan.cost = sum(mass[g.name][keep[g.name]] - mass[g.name][g.channels] for g in prunable if keep[g.name] in mass[g.name])
    predicted = predictor.predict(keep)
    # Progress is the way from the original latency down to the target; layers are timed on the way.
    bar = tqdm(total=100, desc="latency plan", unit="%", disable=not progress, leave=False, bar_format="{desc}: {bar}| {n:.0f}% [{elapsed}]")
    while predicted > target:
        best = _best_move(prunable, keep, widths, mass, predictor, window)
        if best is None:  # nothing in the windows saves time: look at every smaller width
            best = _best_move(prunable, keep, widths, mass, predictor, None)
        if best is None:
            noise = _timing_noise(predictor)
            at_caps = all(keep[g.name] == widths[g.name][0] for g in prunable)  # then the caps, not the noise, stop it
            if noise is not None and not at_caps and predicted - target <= noise * predicted and _other_load() >= BUSY_LOAD:
                raise ChipPruneError(_within_noise(target / start, predicted / start, noise))
            # Layer timings that hardly change with width are what a swamped machine gives.
            flat = " The layer timings barely change with width, which means other work swamps the timings: rerun on a " \
                "quieter machine." if predicted > FLAT_TIMINGS * start else ""
            raise ChipPruneError(
                f"the latency target ({target / start:.1%} of the original) cannot be reached: with no group "
                f"pruned by more than {max_ratio:.0%} (residual streams {max_shared_ratio:.0%}), the best predicted is "
                f"{predicted / start:.1%} (the rest is in layers that are not pruned, or in widths that are "
                f"no faster); a larger --max-shared-ratio lets residual streams go further, at a cost in accuracy.{flat}"
            )
        _, name, width, saved, cost = best
        plan.steps.append(f"{name}: {keep[name]} -> {width} channels, saves {saved:.4g}, cost {cost:.4g}")
        keep[name] = width
        plan.cost += cost
        predicted = predictor.predict(keep)
        bar.update(min(100.0, 100 * (start - predicted) / max(1e-12, start - target)) - bar.n)
    bar.close()
    plan.keep, plan.predicted = keep, predicted
    return plan


def _within_noise(target: float, best: float, noise: float) -> str:
    """A search that missed its target (fractions of the original) by less than the timing noise."""
    nearby = math.ceil(100 * best * (1 + noise)) / 100
    suggestion = f" (--target-latency {nearby:.2f})" if nearby < 1 else ""
    return (
        f"the latency target ({target:.1%} of the original) was missed by less than the timing noise: the best plan "
        f"found is predicted at {best:.1%}, and this run's layer timings are uncertain by +-{noise:.1%} (median 95% "
        f"interval; {_load_text()}): other work on this machine swamps the difference. Rerun when the machine is "
        f"quieter, or ask for a target the noise cannot hide{suggestion}"
    )


def _best_move(groups, keep, widths, mass, predictor, window):
    """(value, group, width, saved, cost) of the move that saves the most per unit of cost, or None."""
    best = None
    for g in groups:
        now = keep[g.name]
        options = [w for w in widths[g.name] if w < now]
        if window is not None:
            options = options[-window:]
        if not options:
            continue
        before = _group_ms(predictor, g.name, keep)
        for w in options:
            saved = before - _group_ms(predictor, g.name, {**keep, g.name: w})
            if saved <= 0:
                continue
            cost = mass[g.name][w] - mass[g.name][now]
            value = saved / cost if cost > 0 else math.inf
            if best is None or value > best[0] or (value == best[0] and saved > best[3]):
                best = (value, g.name, w, saved, cost)
    return best


def _group_ms(predictor: LatencyPredictor, group: str, keep: Mapping[str, int]) -> float:
    # Only the layers a group touches change when it moves. (The untimed rest, which shrinks with the
    # layers' outputs, is left out of the comparison of moves and counted in the prediction.)
    return sum(predictor.layer_cost(layer, keep) for layer in predictor.layers_of(group))



def plan_for_latency_budget(
    model: nn.Module,
    spec: ModelSpec,
    groups: list[ChannelGroup],
    scores: Mapping[str, GroupScores],
    target: str | float,
    *,
    batch_sizes: Iterable[int] = (1,),
    table: str | Path | None = None,
    max_shared_ratio: float = 0.3,
    retime: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Plan:
    """Channels per group for a latency budget: ``target`` is a fraction of the original's predicted
    latency (0.5) or milliseconds ("12ms", one batch size only), on this device, at ``batch_sizes``
    (with several, the mean of the fractions). Layers are timed into ``table`` (default: this
    machine's cache; ``retime``: time again what this run uses) as the search needs them; ``scores``
    decide which groups give up channels; residual streams lose at most ``max_shared_ratio``."""
    batch_sizes = list(dict.fromkeys(int(b) for b in batch_sizes))
    if not batch_sizes or min(batch_sizes) < 1:
        raise ChipPruneError(f"latency batch sizes must be positive integers, got {batch_sizes}")
    kind, value = parse_latency_target(target)
    if kind == "ms" and len(batch_sizes) > 1:
        raise ChipPruneError("a latency target in milliseconds needs exactly one --latency-batch; give a fraction for several")
    latency_table = LatencyTable(table, device, retime=retime)
    models = [LatencyModel(model, spec, groups, latency_table, batch_size=b, progress=progress) for b in batch_sizes]
    predictor = models[0] if len(models) == 1 else BlendedLatency(models)
    full = {g.name: g.channels for g in groups}
    start = predictor.predict(full)  # equals the measured original: LatencyModel sees to it
    goal = value if kind == "ms" else value * start
    if kind == "ms" and goal >= start:
        raise ChipPruneError(f"--target-latency {target}: the unpruned model already takes {start:.2f} ms at batch {batch_sizes[0]}")
    found = None
    try:
        # The search meets the budget by the timings it took on the way; the original's and the plan's
        # layers are then timed again (the faster value kept), and if the plan no longer meets the
        # budget the search goes on from it.
        for _ in range(RETIMED_SEARCHES):
            found = plan_for_latency(groups, scores, predictor, goal, max_shared_ratio=max_shared_ratio, progress=progress,
                                     start_keep=found.keep if found else None)
            for m in models:
                m.refresh(full)
                m.refresh(found.keep)
                _check_faster(m, full, found.keep)
            goal = value if kind == "ms" else value * predictor.predict(full)
            if predictor.predict(found.keep) <= goal:
                break
    finally:
        latency_table.save()
    if found.keep == full:
        raise ChipPruneError(f"the latency search ended with nothing pruned (predicted {found.predicted:.4g} against the target "
                             f"{goal:.4g}); this is a fault in the latency table, please report it")
    what = f"{value:g} ms" if kind == "ms" else f"{value:.0%} of the original"
    plan = plan_from_keep(model, spec, groups, {g.name: found.keep[g.name] for g in groups},
                          f"target latency {what} at batch {', '.join(map(str, batch_sizes))}")
    _confirm_predictions(plan, models, full, latency_table)
    return plan


def _check_faster(m: LatencyModel, full: dict[str, int], keep: Mapping[str, int]) -> None:
    """A plan timed again and predicted no faster than the original: the timings cannot be trusted."""
    before, after = m.predict(full), m.predict(keep)
    if after >= before:
        raise ChipPruneError(
            f"latency timings on this machine are unreliable: timed again, the plan is predicted at {after:.2f} ms against "
            f"{before:.2f} ms for the unpruned model at batch {m.batch_size} (the load on the machine moved while timing). "
            "Rerun with --retime on a quieter machine, or give a MAC budget (--target-macs) instead"
        )


def _confirm_predictions(plan: Plan, models: list[LatencyModel], full: dict[str, int], table: LatencyTable) -> None:
    """Record the predictions for the original and the plan (both timed again after the search). A
    plan then predicted no faster than the original means the timings cannot be trusted: an error
    that says so, not a plan."""
    for m in models:
        _check_faster(m, full, plan.keep)
        before, after = m.predict(full), m.predict(plan.keep)
        plan.latency[str(m.batch_size)] = {"original_ms": before, "predicted_ms": after, "measured_original_ms": m.original}
        plan.notes.append(f"batch {m.batch_size}: predicted {before / after:.2f}x faster ({after:.2f} of {before:.2f} ms at the "
                          f"latency table's reference speed; {table.measured} layer timings taken, table {table.path})")
    plan.notes.extend(table.notes)
