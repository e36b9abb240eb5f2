"""timm's models by name, ``timm:NAME``, built with random weights (``pretrained=False``: nothing is
downloaded; weights come from the user's file through ``load_model(..., weights=FILE)``).

The input size, mean and std are the model's own (its ``pretrained_cfg``). timm is an optional
dependency: ``pip install 'chipprune[timm]'``.
"""

from __future__ import annotations

import difflib
from functools import lru_cache, partial
from typing import Any

import torch
import torch.nn as nn

from ..errors import ChipPruneError
from .spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

__all__ = ["PREFIX", "is_timm_name", "spec_for"]

PREFIX = "timm:"


def is_timm_name(name: str) -> bool:
    """Whether ``name`` names a timm model (``timm:NAME``)."""
    return isinstance(name, str) and name.startswith(PREFIX)


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ChipPruneError("timm models need the 'timm' extra: pip install 'chipprune[timm]'") from None
    return timm


@lru_cache(maxsize=1)
def _timm_names() -> tuple[str, ...]:
    return tuple(_timm().list_models())


def _build(timm_name: str, num_classes: int | None = None) -> nn.Module:
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return _timm().create_model(timm_name, pretrained=False, **kwargs)


def _triple(values: Any, default: tuple[float, float, float]) -> tuple[float, float, float]:
    values = tuple(float(v) for v in (values or ()))
    return values if len(values) == 3 else default  # type: ignore[return-value]


@lru_cache(maxsize=64)
def spec_for(name: str) -> ModelSpec:
    """The spec of ``timm:NAME``; an unknown NAME raises a ChipPruneError that suggests close ones."""
    timm_name = name[len(PREFIX):] if is_timm_name(name) else name
    if timm_name not in _timm_names():
        close = difflib.get_close_matches(timm_name, _timm_names(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
        raise ChipPruneError(f"unknown timm model '{timm_name}'.{hint} timm.list_models() lists them all.")
    with torch.device("meta"):  # built without memory or initialisation, for its config and class count
        model = _build(timm_name)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    input_size = cfg.get("input_size") or (3, 224, 224)
    return ModelSpec(
        name=PREFIX + timm_name,
        factory=partial(_build, timm_name),
        family="timm",
        image_size=int(input_size[-1]),
        num_classes=int(getattr(model, "num_classes", 0) or 0),
        mean=_triple(cfg.get("mean"), IMAGENET_MEAN),
        std=_triple(cfg.get("std"), IMAGENET_STD),
        notes="timm",
        task="classification",
    )
