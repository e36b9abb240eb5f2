"""Channel scoring criteria behind one interface, so CHIP can be compared honestly with others.

  chip    channel independence of the post-activation maps (the method; needs calibration images)
  hrank   mean matrix rank of each channel's map (HRank, the authors' predecessor; needs images)
  l1      L1 magnitude of the group's weights (Torch-Pruning's MagnitudeImportance; no images)
  random  seeded random scores (a floor any criterion should beat; no images)

Higher scores mean "keep". ``CRITERIA`` is the one registry; ``score, prune`` and ``pilot`` all go
through ``Criterion.score``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp

from ..errors import ChipPruneError
from ..surgery.groups import ChannelGroup
from .independence import channel_independence_per_image
from .streaming import GroupScores, PerImageScore, score_groups

__all__ = ["Criterion", "CRITERIA", "get_criterion", "hrank_per_image"]

# Scores that need no images: (dependency graph, model, group, random generator) -> (channels,) float64.
WeightScore = Callable[[tp.DependencyGraph, nn.Module, ChannelGroup, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Criterion:
    """A way to score channels: from feature maps of calibration images (``per_image``) or from
    the weights alone (``from_weights``); exactly one of the two is set."""

    name: str
    description: str
    per_image: PerImageScore | None = None
    from_weights: WeightScore | None = None

    @property
    def needs_images(self) -> bool:
        return self.per_image is not None

    def score(
        self,
        model: nn.Module,
        groups: Sequence[ChannelGroup],
        *,
        batches: Iterable | None = None,
        dg: tp.DependencyGraph | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        progress: bool = True,
        total: int | None = None,
    ) -> dict[str, GroupScores]:
        """Scores of every channel of ``groups``: from ``batches`` (image criteria) or from the
        weights, read through the dependency graph ``dg`` (weight criteria)."""
        if not groups:
            return {}
        if self.per_image is not None:
            if batches is None:
                raise ChipPruneError(f"criterion '{self.name}' needs calibration images")
            return score_groups(model, groups, batches, self.per_image, label=self.name, device=device, progress=progress, total=total)
        assert self.from_weights is not None and dg is not None, "weight criteria read the dependency graph"
        generator = torch.Generator().manual_seed(seed)
        return {g.name: GroupScores(g.name, self.from_weights(dg, model, g, generator), [], 0, float("nan")) for g in groups}


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


def _group_magnitude(dg: tp.DependencyGraph, model: nn.Module, group: ChannelGroup, _: torch.Generator) -> torch.Tensor:
    """Mean L1 norm over every weight coupled with each channel (Torch-Pruning's group magnitude)."""
    root = dict(model.named_modules())[group.name]
    full = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, list(range(group.channels)))
    magnitude = tp.importance.MagnitudeImportance(p=1, group_reduction="mean", normalizer=None)
    return magnitude(full).double().cpu()


def _random(_dg: tp.DependencyGraph, _model: nn.Module, group: ChannelGroup, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(group.channels, generator=generator, dtype=torch.float64)


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("chip", "channel independence of the post-activation maps (CHIP)", per_image=channel_independence_per_image),
        Criterion("hrank", "mean rank of each channel's map (HRank)", per_image=hrank_per_image),
        Criterion("l1", "L1 magnitude of all weights coupled with the channel (Torch-Pruning's group magnitude)",
                  from_weights=_group_magnitude),
        Criterion("random", "seeded random scores (a floor)", from_weights=_random),
    )
}


def get_criterion(name: str | Criterion) -> Criterion:
    """The criterion called ``name`` (a Criterion passes through); a clear error for unknown names."""
    if isinstance(name, Criterion):
        return name
    if name not in CRITERIA:
        raise ChipPruneError(f"unknown criterion '{name}'; choose from {', '.join(CRITERIA)}")
    return CRITERIA[name]
