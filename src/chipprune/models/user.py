"""A user's own model, named ``package.module:function`` (a factory that returns an nn.Module)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch.nn as nn

from ..errors import ChipPruneError
from .spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from .timm_models import is_timm_name

__all__ = ["is_user_factory", "spec_for"]


def is_user_factory(name: str) -> bool:
    """Whether ``name`` names a user's function (building such a model imports and runs their code);
    ``timm:NAME`` names a timm model, not a function."""
    return ":" in name and not is_timm_name(name)


def spec_for(name: str) -> ModelSpec:
    """Import ``package.module`` (the current folder is searched too) and wrap ``function``."""
    module_name, _, func_name = name.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # like `python -m`: the current folder can hold the module
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - the user's import error, whatever it is, gets one message
        raise ChipPruneError(f"cannot import '{module_name}' for --model {name}: {type(exc).__name__}: {exc}") from None
    function = getattr(module, func_name, None)
    if not callable(function):
        raise ChipPruneError(f"'{module_name}' has no function '{func_name}' (from --model {name})")

    def build(num_classes: int | None = None) -> nn.Module:
        # The function takes no arguments: it decides its own classes.
        try:
            return function()
        except Exception as exc:  # noqa: BLE001 - the user's code, whatever it raises, gets one message
            raise ChipPruneError(f"calling {name}() failed ({type(exc).__name__}: {exc}); it must build the model with no arguments") from None

    return ModelSpec(name=name, factory=build, family="custom", image_size=224, num_classes=0,
                     mean=IMAGENET_MEAN, std=IMAGENET_STD, notes="user factory")
