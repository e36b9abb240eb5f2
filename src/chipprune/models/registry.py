"""One registry of model names, and the one way to build a model: ``load_model``.

Names: chipprune's CIFAR models (declared in their modules' ``MODELS``), every torchvision
model, timm's as ``timm:NAME`` (not listed: timm has over a thousand), and ``package.module:function``
for a user's own factory.
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import torch.nn as nn

from ..errors import ChipPruneError
from ..io.weights import load_weights
from . import timm_models, torchvision_models, user
from .cifar_resnet import MODELS as CIFAR_RESNETS
from .cifar_vgg import MODELS as CIFAR_VGGS
from .spec import ModelSpec

__all__ = ["get_model_spec", "list_models", "load_model"]


@lru_cache(maxsize=1)
def _own_models() -> dict[str, ModelSpec]:
    return {spec.name: spec for spec in (*CIFAR_RESNETS, *CIFAR_VGGS)}


def list_models() -> list[str]:
    """The model names chipprune lists: its CIFAR models first, then torchvision's (``timm:NAME`` works
    for any of timm's models too, unlisted)."""
    return list(_own_models()) + list(torchvision_models.names())


def get_model_spec(name: str, image_size: int | None = None) -> ModelSpec:
    """Look a model up by name (or ``package.module:function``); unknown names raise a ChipPruneError
    that suggests close ones. ``image_size`` overrides the input size the model is traced and counted at."""
    if image_size is not None and int(image_size) < 1:
        raise ChipPruneError(f"the image size must be a positive number of pixels, got {image_size}")
    spec = _lookup(name)
    return spec if image_size is None else replace(spec, image_size=int(image_size))


def _lookup(name: str) -> ModelSpec:
    if timm_models.is_timm_name(name):  # before user factories: 'timm:' is not a package.module
        return timm_models.spec_for(name)
    if user.is_user_factory(name):
        return user.spec_for(name)
    if name in _own_models():
        return _own_models()[name]
    if name in torchvision_models.names():
        return torchvision_models.spec_for(name)
    close = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ChipPruneError(f"unknown model '{name}'.{hint} Run 'chipprune models' to list them.")


def load_model(
    name: str | ModelSpec, weights: str | Path | None = "bundled", num_classes: int | None = None, image_size: int | None = None
) -> tuple[nn.Module, ModelSpec]:
    """Build a model by name (or spec) and load weights: ``"bundled"`` (the shipped ones; an error for
    models that ship none), a file path, or None/"none" (random initialisation). Returns (model in
    eval mode, its spec)."""
    if isinstance(name, ModelSpec):
        spec = name if image_size is None else replace(name, image_size=int(image_size))
    else:
        spec = get_model_spec(name, image_size)
    model = spec.build(num_classes)
    if num_classes is not None:  # recorded with the pruned model (a detector's classes are not its last layer's width)
        spec = replace(spec, num_classes=int(num_classes))
    if weights == "bundled":
        path = spec.bundled_weights_path()
        if path is None:
            raise ChipPruneError(
                f"no weights ship with '{spec.name}'; pass --weights FILE (a state dict or safetensors), "
                "or --weights none to use random initialisation"
            )
        load_weights(model, path)
    elif weights is not None and str(weights) != "none":
        load_weights(model, weights)
    return model.eval(), spec
