"""A pruning plan: how many channels each group keeps, and what that costs in params and MACs."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import ChipPruneError
from ..evaluation.metrics import count_macs, count_params
from ..models.spec import ModelSpec
from ..runtime import device_of
from ..surgery.apply import prune_group, select_top
from ..surgery.groups import ChannelGroup, build_graph

__all__ = ["Plan", "pruned_copy", "size_after", "channels_to_keep", "keep_counts", "plan_from_keep"]


@dataclass
class Plan:
    """How many channels each group keeps, before any scoring."""

    ratios: dict[str, float]  # group -> ratio asked for
    keep: dict[str, int]  # group -> channels kept
    description: str  # the sparsity string, plan file or budget it came from
    round_to: int = 1
    notes: list[str] = field(default_factory=list)
    params: int = 0  # after pruning
    macs: int = 0
    # Latency plans: per batch size, the original's and the plan's predicted milliseconds.
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()  # layers that keep their output channels (the groups were traced without them)


def pruned_copy(model: nn.Module, spec: ModelSpec, groups: Sequence[ChannelGroup], keep: Mapping[str, int]) -> nn.Module:
    """A copy of ``model`` with ``keep[g]`` channels per group (the first ones: for sizes and speed,
    which channels does not matter). The model is untouched."""
    trial = copy.deepcopy(model).eval()
    dg = build_graph(trial, spec.example_input(device_of(trial)), spec.custom_pruners)
    for g in groups:
        if keep.get(g.name, g.channels) < g.channels:
            _, remove = select_top(torch.zeros(g.channels), keep[g.name], g.channel_groups)
            prune_group(dg, trial, g.name, remove)
    return trial


def size_after(model: nn.Module, spec: ModelSpec, groups: Sequence[ChannelGroup], keep: Mapping[str, int]) -> tuple[int, int]:
    """Params and MACs of ``model`` with ``keep[g]`` channels per group (any channels: sizes do not
    depend on which)."""
    trial = pruned_copy(model, spec, groups, keep)
    try:
        return count_params(trial), count_macs(trial, spec.example_input())
    except RuntimeError as exc:  # the surgery left layers that no longer fit together
        raise ChipPruneError(f"a copy of {spec.name} with the planned widths no longer runs ({str(exc)[:200]}): Torch-Pruning "
                             "followed its channel coupling wrongly. Keep the layers involved with --ignore") from None


def plan_from_keep(
    model: nn.Module, spec: ModelSpec, groups: Sequence[ChannelGroup], keep: Mapping[str, int], description: str,
    round_to: int = 1,
) -> Plan:
    """The plan that keeps ``keep[g]`` channels per group, with its sizes."""
    params, macs = size_after(model, spec, groups, keep)
    ratios = {g.name: 1 - keep[g.name] / g.channels for g in groups}
    return Plan(ratios, dict(keep), description, round_to, [], params, macs)


def channels_to_keep(channels: int, ratio: float, round_to: int = 1) -> int:
    """The paper's rule: keep ``int(C * (1 - ratio))`` channels, and never fewer than one.

    With ``round_to`` > 1 the count is rounded to the nearest multiple (at least one multiple, at
    most C), so kernels see hardware-friendly widths; a ratio of 0 keeps every channel.
    """
    if ratio <= 0:
        return channels
    keep = max(1, int(channels * (1.0 - ratio)))
    if round_to > 1 and channels > round_to:
        keep = min(channels, max(round_to, round_to * round(keep / round_to)))
    return keep


def keep_counts(groups: Sequence[ChannelGroup], ratios: Mapping[str, float], round_to: int = 1) -> dict[str, int]:
    """Channels each group keeps at ``ratios`` (grouped convs: the rule applies per block)."""
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
