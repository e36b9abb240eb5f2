"""What chipprune knows about a model, declared beside its definition (as torchvision declares a
model's weights and their metadata beside its builder).

A ``ModelSpec`` holds how to build the model and everything model-specific the pipeline needs:
its input, the paper's sparsity string and the layer layout such strings are written in, where the
official code takes feature maps when that differs from the default, and Torch-Pruning pruners for
the model's own layer types. Nothing elsewhere in chipprune tests a model's name or family.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..errors import ChipPruneError
from .layers import LAYER_PRUNERS

__all__ = ["LayoutEntry", "ModelSpec", "IMAGENET_MEAN", "IMAGENET_STD", "CIFAR_MEAN", "CIFAR_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True)
class LayoutEntry:
    """One entry of a paper sparsity string: a label for people, and the layers whose output
    channels it prunes (none: the entry names layers that are not pruned)."""

    label: str
    modules: tuple[str, ...]


@dataclass(frozen=True)
class ModelSpec:
    """A named model: how to build it, its input, and what is known about pruning it."""

    name: str
    factory: Callable[..., nn.Module]  # called with num_classes=... when a class count is asked for
    family: str  # shown by `chipprune models`
    image_size: int
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bundled_weights: str | None = None  # file name under chipprune/assets
    notes: str = ""
    # The paper's default sparsity string, and the layers its entries name, in order.
    paper_sparsity: str | None = None
    paper_layout: Callable[[nn.Module], list[LayoutEntry]] | None = None
    # The module whose *output* shows a group's channels, by group name, where the official code
    # scores another map than the consumers' input (None for a group: the default).
    feature_map: Callable[[str], str | None] | None = None
    # Why this model cannot be pruned (None: it can), said at once instead of attempting it.
    unsupported: str | None = None
    # Torch-Pruning pruning functions for layer types it does not know (default: chipprune's own layers).
    custom_pruners: Mapping[type, Any] = field(default_factory=lambda: dict(LAYER_PRUNERS), hash=False, compare=False)

    def bundled_weights_path(self) -> Path | None:
        if self.bundled_weights is None:
            return None
        return Path(str(resources.files("chipprune") / "assets" / self.bundled_weights))

    def build(self, num_classes: int | None = None) -> nn.Module:
        """A freshly initialised model (nothing is downloaded)."""
        if num_classes is not None and num_classes < 1:
            raise ChipPruneError(f"the number of classes must be at least 1, got {num_classes}")
        model = self.factory() if num_classes is None else self.factory(num_classes=num_classes)
        if not isinstance(model, nn.Module):
            raise ChipPruneError(f"the factory for '{self.name}' returned {type(model).__name__}, not an nn.Module")
        return model
