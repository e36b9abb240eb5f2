"""Channel scoring criteria behind one interface, so CHIP can be compared honestly with others.

  chip    channel independence of the post-activation maps (the method; needs calibration images)
  hrank   mean matrix rank of each channel's map (HRank, the authors' predecessor; needs images)
  l1      L1 magnitude of the group's weights (Torch-Pruning's MagnitudeImportance; no images)
  random  seeded random scores (a floor any criterion should beat; no images)
Higher scores mean "keep".
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch_pruning as tp

from .errors import ChipPruneError
from .graph import ChannelGroup
from .scoring import CRITERIA as MAP_CRITERIA
from .scoring import GroupScores, score_groups

__all__ = ["CRITERIA_NAMES", "needs_images", "hrank_per_image", "weight_scores", "score_with"]

CRITERIA_NAMES = ("chip", "hrank", "l1", "random")


def needs_images(criterion: str) -> bool:
    return criterion in MAP_CRITERIA


def hrank_per_image(feature_maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HRank: the rank of each channel's H x W map, per image (N, C); normaliser min(H, W) per image."""
    maps = feature_maps.detach().float()
    if maps.dim() < 4:
        maps = maps.reshape(maps.shape[0], maps.shape[1], 1, -1)
    if not torch.isfinite(maps).all():
        raise ChipPruneError("feature maps contain NaN or Inf")
    ranks = torch.linalg.matrix_rank(maps).double()
    norm = torch.full((maps.shape[0],), float(min(maps.shape[-2:])), dtype=torch.float64)
    return ranks, norm


MAP_CRITERIA["hrank"] = hrank_per_image


def weight_scores(criterion: str, dg: tp.DependencyGraph, model: nn.Module, groups: list[ChannelGroup], seed: int) -> dict[str, GroupScores]:
    """Scores that need no images: group L1 magnitude, or seeded random numbers."""
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(seed)
    magnitude = tp.importance.MagnitudeImportance(p=1, group_reduction="mean", normalizer=None)
    out = {}
    for g in groups:
        if criterion == "random":
            scores = torch.rand(g.channels, generator=generator, dtype=torch.float64)
        else:
            root = modules[g.name]
            full = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, list(range(g.channels)))
            scores = magnitude(full).double().cpu()
        out[g.name] = GroupScores(g.name, scores, [], 0, float("nan"))
    return out


def score_with(
    criterion: str,
    model: nn.Module,
    dg: tp.DependencyGraph | None,
    groups: list[ChannelGroup],
    batches: Iterable | None,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
    total: int | None = None,
) -> dict[str, GroupScores]:
    """Score ``groups`` with ``criterion`` (images are drawn from ``batches`` when it needs them)."""
    if criterion not in CRITERIA_NAMES:
        raise ChipPruneError(f"unknown criterion '{criterion}'; choose from {', '.join(CRITERIA_NAMES)}")
    if not groups:
        return {}
    if needs_images(criterion):
        if batches is None:
            raise ChipPruneError(f"criterion '{criterion}' needs calibration images")
        return score_groups(model, groups, batches, criterion=criterion, device=device, progress=progress, total=total)
    return weight_scores(criterion, dg, model, groups, seed)
