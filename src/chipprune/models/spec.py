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

import torch
import torch.nn as nn

from ..errors import ChipPruneError
from ..runtime import move_to
from .layers import LAYER_PRUNERS

__all__ = ["LayoutEntry", "ModelSpec", "TASKS", "IMAGENET_MEAN", "IMAGENET_STD", "CIFAR_MEAN", "CIFAR_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

# What a model's outputs are. Only classifiers have a metric chipprune computes itself (top-1/top-5
# accuracy on labelled images); the others are measured by a user's ``evaluate`` function, or not at all.
TASKS = ("classification", "detection", "segmentation", "custom")


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
    task: str = "classification"  # one of TASKS
    # The model takes a list of (3, H, W) images, not a batch tensor (torchvision's detectors).
    images_as_list: bool = False
    # For models whose input is not an image batch: one input exactly as the model takes it.
    example: Any = field(default=None, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ChipPruneError(f"unknown task '{self.task}' for {self.name}; one of {', '.join(TASKS)}")

    def bundled_weights_path(self) -> Path | None:
        if self.bundled_weights is None:
            return None
        return Path(str(resources.files("chipprune") / "assets" / self.bundled_weights))

    def require_classifier(self, what: str) -> None:
        """Refuse ``what`` (a command that trains or measures accuracy) for a model that is not a classifier."""
        if self.task != "classification":
            raise ChipPruneError(
                f"{what} trains and measures classifiers; {self.name} is a {self.task} model. Prune it with 'chipprune prune', "
                "then fine-tune it in your own training loop (chipprune.load_pruned gives the pruned model), or use the "
                "Python API with your own evaluate and loss functions (docs/ANY_MODEL.md)"
            )

    def model_input(self, images: torch.Tensor) -> Any:
        """A batch of images (N, 3, H, W) as the model takes it."""
        return list(images) if self.images_as_list else images

    def example_input(self, device: torch.device | str = "cpu") -> Any:
        """One input of the size the model is traced, counted and timed at: ``example``, or a blank image."""
        if self.example is not None:
            return move_to(self.example, device)
        return self.model_input(torch.zeros(1, 3, self.image_size, self.image_size, device=device))

    def build(self, num_classes: int | None = None) -> nn.Module:
        """A freshly initialised model (nothing is downloaded)."""
        if num_classes is not None and num_classes < 1:
            raise ChipPruneError(f"the number of classes must be at least 1, got {num_classes}")
        model = self.factory() if num_classes is None else self.factory(num_classes=num_classes)
        if not isinstance(model, nn.Module):
            raise ChipPruneError(f"the factory for '{self.name}' returned {type(model).__name__}, not an nn.Module")
        return model
