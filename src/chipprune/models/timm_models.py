"""timm's models by name, ``timm:NAME``, built with random weights (``pretrained=False``: nothing is
downloaded; weights come from the user's file through ``load_model(..., weights=FILE)``).

The input size, mean and std are the model's own (its ``pretrained_cfg``). timm is an optional
dependency: ``pip install 'chipprune[timm]'``. Declared here too: a Torch-Pruning pruner for timm's
MetaFormer layer scale (PoolFormer, ConvFormer, CAFormer), and the families that cannot be pruned
(bench/torchvision_sweep.py tried one model of each; docs/MODELS.md).
"""

from __future__ import annotations

import difflib
from functools import lru_cache, partial
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from ..errors import ChipPruneError
from .layers import LAYER_PRUNERS
from .spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

__all__ = ["PREFIX", "UNSUPPORTED", "ScalePruner", "is_timm_name", "spec_for"]

PREFIX = "timm:"

_SPLITS = "Torch-Pruning 1.6 prunes the layer before it without keeping the parts' widths"
# timm families chipprune cannot prune, by name prefix, and why. Each was found by pruning the model
# named in brackets at 30% (bench/torchvision_sweep.py; the sibling families checked by hand): without
# this list most fail with a shape error in the first forward pass after surgery.
UNSUPPORTED = {
    "res2ne": f"Res2Net splits each block's channels into fixed-width parts; {_SPLITS} [res2net50_26w_4s, res2next50]",
    "resnest": f"ResNeSt's split attention reshapes channels into fixed radix groups; {_SPLITS} [resnest14d, resnest26d]",
    "csp": f"CSP stages split their channels in two at a fixed index; {_SPLITS} [cspdarknet53, cspresnet50]",
    "ghostnet": "Ghost modules concatenate two maps and slice them to a fixed width, which Torch-Pruning 1.6 cannot "
                "follow [ghostnet_100, ghostnetv2_100]",
    "mixnet": f"MixNet's mixed convs split channels into fixed-size kernel groups; {_SPLITS} [mixnet_s]",
    "tf_mixnet": f"MixNet's mixed convs split channels into fixed-size kernel groups; {_SPLITS} [tf_mixnet_s]",
    "inception_next": f"InceptionNeXt's token mixer splits channels at fixed sizes; {_SPLITS} [inception_next_atto]",
    "edgenext": f"EdgeNeXt's split transpose blocks split channels into fixed-width parts; {_SPLITS} [edgenext_xx_small]",
    "dpn": "a dual-path network (slices of concatenated maps): Torch-Pruning 1.6 cannot trace or prune its coupling [dpn68, dpn48b]",
    "nfnet": "a normaliser-free network: Torch-Pruning 1.6 does not prune the per-channel gain of its scaled "
             "weight-standardised convs [nfnet_l0]",
    "dm_nfnet": "a normaliser-free network: Torch-Pruning 1.6 does not prune the per-channel gain of its scaled "
                "weight-standardised convs",
    "eca_nfnet": "a normaliser-free network: Torch-Pruning 1.6 does not prune the per-channel gain of its scaled "
                 "weight-standardised convs",
    "nf_": "a normaliser-free network: Torch-Pruning 1.6 does not prune the per-channel gain of its scaled "
           "weight-standardised convs [nf_regnet_b0]",
    "ecaresnet": "ECA attention convolves across channels (a Conv1d on the pooled channels): Torch-Pruning 1.6 takes "
                 "about 90 s to trace it, then prunes a conv to zero channels [ecaresnet26t]",
    "rexnet": "tracing ReXNet with Torch-Pruning 1.6 did not finish in 500 s at 64x64 [rexnet_100]",
}


class ScalePruner(tp.pruner.BasePruningFunc):
    """timm's MetaFormer layer scale (``Scale``: PoolFormer, ConvFormer, CAFormer) multiplies by its
    parameter viewed in a shape stored at build time; Torch-Pruning would prune the parameter only."""

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        removed = {int(i) for i in idxs}
        keep = torch.tensor([i for i in range(layer.scale.shape[0]) if i not in removed], dtype=torch.long)
        scale = layer.scale.data.index_select(0, keep.to(layer.scale.device)).clone()
        layer.scale = nn.Parameter(scale, requires_grad=layer.scale.requires_grad)
        layer.shape = (len(keep), *layer.shape[1:])
        return layer

    prune_in_channels = prune_out_channels  # one channel in, the same channel out

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(layer.scale.shape[0])

    get_in_channels = get_out_channels


def _pruners() -> dict:
    try:
        from timm.models.metaformer import Scale
    except ImportError:  # a timm without MetaFormer
        return dict(LAYER_PRUNERS)
    return {**LAYER_PRUNERS, Scale: ScalePruner()}


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
        custom_pruners=_pruners(),
        unsupported=next((why for prefix, why in UNSUPPORTED.items() if timm_name.startswith(prefix)), None),
    )
