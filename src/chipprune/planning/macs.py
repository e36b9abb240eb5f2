"""Plans for a MAC budget: one pruning level for every group, searched until the MACs land within
1% of the target, then single groups nudged when wide width steps leave it further off."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from ..errors import ChipPruneError
from ..evaluation.metrics import count_macs
from ..models.spec import ModelSpec
from ..surgery.groups import ChannelGroup
from .plan import Plan, plan_from_keep, size_after

__all__ = ["plan_for_macs"]


def plan_for_macs(model: nn.Module, spec: ModelSpec, groups: Sequence[ChannelGroup], target: float, round_to: int = 1) -> Plan:
    """Channels per group so that the MACs are within 1% of ``target`` (<= 1: a fraction of the
    model's MACs; above: a count), or as close as the width steps allow (a note says so)."""
    base = count_macs(model, spec.example_input())
    goal = _goal(target, base)
    best = _bisect_level(model, spec, groups, target, base, round_to)
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


def _goal(target: float, base: int) -> float:
    if 1 < target < 1000:  # neither a fraction nor a plausible count of MACs
        raise ChipPruneError(
            f"--target-macs {target:g}: give the fraction of the MACs to keep, in (0, 1) (e.g. 0.5), or a count of MACs "
            f"(the model has {base:,})"
        )
    goal = target * base if target <= 1 else target
    if not 0 < goal < base:
        raise ChipPruneError(
            f"--target-macs {target} asks for {goal:,.0f} MACs; the model has {base:,} (give a fraction in (0, 1) or fewer MACs)"
        )
    return goal


def _bisect_level(model: nn.Module, spec: ModelSpec, groups: Sequence[ChannelGroup], target: float, base: int, round_to: int) -> Plan:
    """Bisect one pruning level r for all groups towards the target; the closest plan seen.

    At level r group g keeps about C_g (1 - r) channels, rounded down after adding a fixed offset
    that differs per group: as r grows, groups lose channels one at a time instead of all at once,
    so the MACs fall in small steps and bisection can land close to the target.
    """
    goal = _goal(target, base)
    offsets = {g.name: (i + 0.5) / len(groups) for i, g in enumerate(groups)}
    description = f"target MACs {goal:,.0f} ({goal / base:.1%})"

    def attempt(r: float) -> Plan:
        keep = {}
        for g in groups:
            block = g.channels // g.channel_groups
            units = max(1, int(block * (1 - r) / round_to + offsets[g.name]))
            keep[g.name] = min(block, units * round_to) * g.channel_groups if block > round_to else g.channels
        return plan_from_keep(model, spec, groups, keep, description, round_to)

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
    return best


def _nudge_towards(model: nn.Module, spec: ModelSpec, groups: Sequence[ChannelGroup], plan: Plan, goal: float, round_to: int) -> Plan:
    """Move single groups one width step towards ``goal`` when one level for all groups lands too far
    from it (wide --round-to steps): each group's step is measured alone, the steps that bring the
    MACs closest are combined, and the result is kept if it is really closer."""
    direction = 1 if plan.macs < goal else -1
    deltas = {}
    for g in groups:
        step = round_to * g.channel_groups
        moved = plan.keep[g.name] + direction * step
        if g.channels // g.channel_groups > round_to and step <= moved <= g.channels:
            deltas[g.name] = (moved, size_after(model, spec, groups, {**plan.keep, g.name: moved})[1] - plan.macs)
    keep, missing = dict(plan.keep), goal - plan.macs
    for name, (moved, delta) in sorted(deltas.items(), key=lambda item: -abs(item[1][1])):
        if abs(missing - delta) < abs(missing):
            keep[name], missing = moved, missing - delta
    nudged = plan_from_keep(model, spec, groups, keep, plan.description, round_to)
    return nudged if abs(nudged.macs - goal) < abs(plan.macs - goal) else plan
