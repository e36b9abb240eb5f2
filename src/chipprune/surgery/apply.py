"""Removing channels for real: which ones (the highest scores stay), and the surgery itself."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch_pruning as tp

from .groups import ChannelGroup, quiet_torch_pruning

if TYPE_CHECKING:  # scoring sits above surgery's groups; only the type is needed here
    from ..scoring.streaming import GroupScores

__all__ = ["select_top", "prune_group", "GroupRemoval", "remove_channels"]


def select_top(scores: torch.Tensor, keep: int, channel_groups: int = 1) -> tuple[list[int], list[int]]:
    """The ``keep`` highest-scoring indices and the rest, both sorted; ties keep the lower index.

    With ``channel_groups`` > 1 (grouped convolutions), the channels form that many equal blocks:
    scores are averaged over the blocks, ``keep / channel_groups`` positions are chosen once and
    kept in every block.
    """
    n = scores.numel()
    if channel_groups > 1 and n % channel_groups == 0:
        block = n // channel_groups
        keep_block, _ = select_top(scores.double().view(channel_groups, block).mean(0), keep // channel_groups)
        kept = sorted(g * block + i for g in range(channel_groups) for i in keep_block)
        return kept, sorted(set(range(n)) - set(kept))
    # Stable sort on the negated scores: equal scores keep their original order.
    order = torch.sort(-scores.double(), stable=True).indices
    return sorted(order[:keep].tolist()), sorted(order[keep:].tolist())


def prune_group(dg: tp.DependencyGraph, model: nn.Module, group_name: str, remove: Sequence[int]) -> None:
    """Remove the channels ``remove`` (indices of the root's output channels) from a group, for real."""
    if len(remove) == 0:
        return
    root = dict(model.named_modules())[group_name]
    # The named member's own output channels are the group's channels (same order as the root's).
    pruner = dg.get_pruner_of_module(root)
    with quiet_torch_pruning():
        group = dg.get_pruning_group(root, pruner.prune_out_channels, sorted(int(i) for i in remove))
        group.prune()


@dataclass
class GroupRemoval:
    """What one group lost, as the pruning record keeps it (enough to replay the surgery)."""

    group: str
    members: list[str]
    ratio: float
    channels_before: int
    channels_after: int
    removed: list[int]
    scored_maps: list[str]
    split_half_spearman: float


def remove_channels(
    model: nn.Module, dg: tp.DependencyGraph, groups: Sequence[ChannelGroup], keep: Mapping[str, int],
    scores: Mapping[str, GroupScores],
) -> list[GroupRemoval]:
    """Keep the ``keep[g]`` highest-scoring channels of every group that loses some; remove the rest
    from ``model`` in place. Returns what each such group lost."""
    removals = []
    for g in groups:
        if keep[g.name] >= g.channels:
            continue
        # The plan fixed the count; re-deriving it from a ratio in floating point could miss by one.
        kept, removed = select_top(scores[g.name].scores, keep[g.name], g.channel_groups)
        prune_group(dg, model, g.name, removed)
        removals.append(GroupRemoval(
            g.name, list(g.members), round(1.0 - keep[g.name] / g.channels, 6), g.channels, len(kept), removed,
            list(scores[g.name].maps), round(scores[g.name].split_half_spearman, 6),
        ))
    return removals
