"""One registry of model names: chipprune's CIFAR models plus every torchvision classification model."""

from __future__ import annotations

import difflib
import importlib
import sys
from dataclasses import dataclass, field, replace
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Callable

import torch.nn as nn
import torchvision

from ..errors import ChipPruneError
from .cifar_resnet import cifar_resnet
from .cifar_vgg import cifar_vgg16_bn

__all__ = ["ModelSpec", "get_model_spec", "list_models", "create_model"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True)
class ModelSpec:
    """What chipprune needs to know about a named model."""

    name: str
    factory: Callable[..., nn.Module]
    family: str  # "cifar_resnet", "cifar_vgg" or "torchvision"
    image_size: int
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bundled_weights: str | None = None  # file name under chipprune/assets
    notes: str = field(default="")

    def bundled_weights_path(self) -> Path | None:
        if self.bundled_weights is None:
            return None
        return Path(str(resources.files("chipprune") / "assets" / self.bundled_weights))


def _cifar_specs() -> dict[str, ModelSpec]:
    specs = {}
    for depth in (20, 32, 44, 56, 110):
        name = f"cifar_resnet{depth}"
        specs[name] = ModelSpec(
            name=name,
            factory=partial(cifar_resnet, depth),
            family="cifar_resnet",
            image_size=32,
            num_classes=10,
            # The reference checkpoints were trained with ImageNet statistics (see their README).
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            bundled_weights="cifar_resnet56.safetensors" if depth == 56 else None,
            notes="option-A shortcut" + ("; bundled CIFAR-10 weights" if depth == 56 else ""),
        )
    specs["cifar_vgg16_bn"] = ModelSpec(
        name="cifar_vgg16_bn",
        factory=cifar_vgg16_bn,
        family="cifar_vgg",
        image_size=32,
        num_classes=10,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        notes="HRank/CHIP CIFAR variant",
    )
    return specs


_CIFAR = _cifar_specs()


def _torchvision_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_models() -> list[str]:
    """All model names chipprune knows: its CIFAR models first, then torchvision's classifiers."""
    return list(_CIFAR) + _torchvision_names()


def _factory_spec(name: str) -> ModelSpec:
    """A user's own model given as ``package.module:function`` (a factory returning an nn.Module)."""
    module_name, _, func_name = name.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # like `python -m`: the current folder can hold the module
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - the user's import error, whatever it is, gets one message
        raise ChipPruneError(f"cannot import '{module_name}' for --model {name}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ChipPruneError(f"'{module_name}' has no function '{func_name}' (from --model {name})")
    return ModelSpec(
        name=name,
        factory=factory,
        family="custom",
        image_size=224,
        num_classes=0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        notes="user factory",
    )


def get_model_spec(name: str, image_size: int | None = None) -> ModelSpec:
    """Look a model up by name (or ``package.module:function``); unknown names raise a ChipPruneError
    that suggests close ones. ``image_size`` overrides the input size the model is traced and counted at."""
    if image_size is not None and int(image_size) < 1:
        raise ChipPruneError(f"the image size must be a positive number of pixels, got {image_size}")
    spec = _lookup(name)
    return spec if image_size is None else replace(spec, image_size=int(image_size))


def _lookup(name: str) -> ModelSpec:
    if ":" in name:
        return _factory_spec(name)
    if name in _CIFAR:
        return _CIFAR[name]
    if name in _torchvision_names():
        # Image size: torchvision's classifiers are trained at 224 except Inception-v3 (299).
        size = 299 if name == "inception_v3" else 224
        # GoogLeNet and Inception-v3 warn that their default initialisation will change; ask for
        # today's explicitly, so results do not shift under a torchvision upgrade.
        extra = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
        return ModelSpec(
            name=name,
            factory=partial(torchvision.models.get_model, name, weights=None, **extra),
            family="torchvision",
            image_size=size,
            num_classes=1000,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            notes="torchvision",
        )
    close = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ChipPruneError(f"unknown model '{name}'.{hint} Run 'chipprune models' to list them.")


def create_model(name: str, num_classes: int | None = None) -> nn.Module:
    """Build a named model with freshly initialised weights (nothing is downloaded)."""
    if num_classes is not None and num_classes < 1:
        raise ChipPruneError(f"the number of classes must be at least 1, got {num_classes}")
    spec = get_model_spec(name)
    kwargs = {} if num_classes is None or spec.family == "custom" else {"num_classes": num_classes}
    if spec.family == "custom":
        try:
            model = spec.factory()
        except Exception as exc:  # noqa: BLE001 - the user's code, whatever it raises, gets one message
            raise ChipPruneError(f"calling {name}() failed ({type(exc).__name__}: {exc}); it must build the model with no arguments") from None
    else:
        model = spec.factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ChipPruneError(f"the factory for '{name}' returned {type(model).__name__}, not an nn.Module")
    return model
