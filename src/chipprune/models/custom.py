"""A spec for any ``nn.Module`` from its example input: what the Python API needs to prune a model
chipprune has no name for (a user's detector, segmenter or anything convolutional)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ..errors import ChipPruneError
from .spec import IMAGENET_MEAN, IMAGENET_STD, TASKS, ModelSpec

__all__ = ["custom_spec"]


def custom_spec(name: str, example_input: Any, *, factory: Callable[[], nn.Module] | None = None, task: str = "custom") -> ModelSpec:
    """A spec for your own model.

    ``example_input``: one input exactly as ``model(example_input)`` takes it (a tensor, a list of
    images, a tuple or dict of tensors); the model is traced, its MACs counted and its latency timed
    on it. ``factory``: builds the unpruned architecture (random weights are fine); needed only to
    load a saved pruned folder back (``load_pruned(folder, spec=...)``). ``task``: one of TASKS, for
    reports ("classification" also lets chipprune measure top-1 on labelled images).
    """
    if not name or not isinstance(name, str):
        raise ChipPruneError("custom_spec needs a name for the model (it is recorded in the pruned folder)")
    if task not in TASKS:
        raise ChipPruneError(f"unknown task '{task}'; one of {', '.join(TASKS)}")
    if example_input is None:
        raise ChipPruneError("custom_spec needs an example input, exactly as the model takes it")
    images = example_input if isinstance(example_input, torch.Tensor) and example_input.dim() == 4 else None

    def build(num_classes: int | None = None) -> nn.Module:
        if factory is None:
            raise ChipPruneError(f"the spec of '{name}' has no factory: give custom_spec(..., factory=...) to rebuild the model")
        return factory()

    return ModelSpec(
        name=name, factory=build, family="custom_spec", image_size=int(images.shape[-1]) if images is not None else 0, num_classes=0,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, notes="custom_spec", task=task, example=example_input,
    )
