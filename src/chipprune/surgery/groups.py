"""Coupled channel groups of a model, from Torch-Pruning's dependency graph, and their surgery.

A *group* is a set of output channels that must be removed together: a conv's filters with its
BatchNorm and the next layers' input channels, or every conv that writes into one residual stream.
Each group is named after its root module (the first prunable conv of the group in module order).
A model's own layer types take part through the Torch-Pruning pruners its ModelSpec declares.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from ..errors import ChipPruneError
from ..models.spec import ModelSpec
from ..runtime import device_of
from .guard import tracing_guard

__all__ = [
    "FeatureSource", "ChannelGroup", "quiet_torch_pruning", "find_classifier", "build_graph", "output_layers", "build_groups",
    "prunable_groups", "classifier_outputs",
]


@dataclass
class FeatureSource:
    """A feature map that shows a group's channels: the input of a consuming layer, or a module's output.

    ``positions[i]`` is the channel of that map that carries the group's channel ``root_channels[i]``.
    """

    module_name: str
    kind: str  # "input" or "output"
    positions: torch.Tensor
    root_channels: torch.Tensor
    channel_dim: int = 1  # where the channels are: 1 (N, C, H, W), or -1 for a Linear's (..., C) input


@dataclass
class ChannelGroup:
    """One set of coupled output channels."""

    name: str  # root module name
    channels: int
    members: list[str]  # modules whose output channels belong to the group
    sources: list[FeatureSource] = field(default_factory=list)
    # Grouped convolutions (ResNeXt, RegNet) split the channels into this many equal blocks that
    # must stay equal: the same positions are removed from every block.
    channel_groups: int = 1
    # Every module whose shape the group changes: (module name, "in" or "out", how many of that
    # module's channels belong to the group). Lets a plan's layer shapes be known without pruning.
    couplings: list[tuple[str, str, int]] = field(default_factory=list)


# Layers whose inputs show a group's channels and whose outputs can be a model's outputs. A transposed
# conv (Mask R-CNN's and Keypoint R-CNN's upsampling heads) is the only consumer of some groups.
_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def find_classifier(model: nn.Module, example: Any) -> str:
    """Name of the last Linear/Conv layer run in a forward pass: a classifier's output layer."""
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, _o, n=n: order.append(n))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ChipPruneError("the model has no Conv2d or Linear layer to prune")
    return order[-1]


@contextmanager
def quiet_torch_pruning() -> Iterator[None]:
    """Torch-Pruning's notices that are noise for our users, silenced."""
    with warnings.catch_warnings():
        # Parameters outside layers (ConvNeXt's layer_scale, shape (C, 1, 1)) are pruned along their
        # channel dimension, which is what we want.
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        # Said when a concatenation's channel count cannot be inferred (a detector's post-processing
        # concatenates its head outputs); a concatenation that matters shows when the pruned model runs.
        warnings.filterwarnings("ignore", message="Maximum recursive depth reached")
        yield


def _forward_showing_every_layer(layer_types: tuple[type, ...]):
    """A Torch-Pruning ``forward_fn`` that returns, beside the model's outputs, every output of a layer
    of ``layer_types``. Torch-Pruning follows the graph back from the outputs it is given; a layer
    whose result reaches them only through a detached tensor (a detector's region proposals) would
    otherwise be missing from the graph, and pruning the channels it reads would break it."""

    def forward(model: nn.Module, inputs: Any) -> Any:
        seen: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out) if isinstance(out, torch.Tensor) else None)
                 for m in model.modules() if isinstance(m, layer_types)]
        try:
            return model(inputs), seen
        finally:
            for h in hooks:
                h.remove()

    return forward


def build_graph(model: nn.Module, example: Any, pruners: Mapping[type, Any] | None = None) -> tp.DependencyGraph:
    """Trace ``model`` on ``example`` into Torch-Pruning's dependency graph (``pruners``: pruning
    functions for the model's own layer types, from its ModelSpec).

    Nothing is left out of the trace: ignored layers keep their output channels but must still
    lose input channels when the layers feeding them are pruned.
    """
    pruners = dict(pruners or {})
    forward = _forward_showing_every_layer((*_LAYERS, *pruners))
    try:
        with torch.enable_grad(), quiet_torch_pruning():
            with tracing_guard(type(model).__name__):
                return tp.DependencyGraph().build_dependency(model, example_inputs=example, forward_fn=forward, customized_pruners=pruners)
    except (ArithmeticError, IndexError, KeyError, ValueError, RuntimeError, AssertionError, TypeError) as exc:
        # Torch-Pruning 1.6 cannot follow some channel reorderings, e.g. ShuffleNetV2's channel shuffle.
        raise ChipPruneError(
            f"Torch-Pruning could not trace which channels of {type(model).__name__} are coupled "
            f"({type(exc).__name__}: {exc}). Models that reorder channels with reshapes (channel "
            "shuffle, as in ShuffleNetV2) cannot be pruned with Torch-Pruning 1.6; choose another architecture."
        ) from None


def output_layers(model: nn.Module, dg: tp.DependencyGraph) -> list[str]:
    """The layers whose output channels are the model's outputs (a classifier, a detector's box and
    class predictors, a segmenter's per-pixel classifier), in module order: every conv (plain or
    transposed) or linear layer whose result reaches the end of the traced graph without passing
    through another such layer (a depthwise conv passes its channels through). Pruning them would change what the model returns."""
    names = {m: n for n, m in model.named_modules()}

    def consumes_channels(node) -> bool:
        m = node.module
        depthwise = isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
        return isinstance(m, _LAYERS) and not depthwise

    found = []
    for module, node in dg.module2node.items():
        if module not in names or not isinstance(module, _LAYERS):
            continue
        stack, seen = [node], {node}
        while stack:
            current = stack.pop()
            if not current.outputs:
                found.append(names[module])
                break
            for nxt in current.outputs:
                if nxt not in seen and not consumes_channels(nxt):
                    seen.add(nxt)
                    stack.append(nxt)
    order = list(names.values())
    return sorted(set(found), key=order.index)


def build_groups(
    model: nn.Module, example: Any, ignored: Sequence[str], pruners: Mapping[type, Any] | None = None
) -> tuple[tp.DependencyGraph, list[ChannelGroup], list[str]]:
    """All prunable channel groups of ``model``, and its output layers: those and the layers in
    ``ignored`` keep their output channels."""
    pruners = dict(pruners or {})
    layer_types = (nn.Conv2d, nn.Linear, *pruners)  # the types whose output channels a group lists
    dg = build_graph(model, example, pruners)
    outputs = output_layers(model, dg)
    names = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    order = list(modules)
    groups = []
    kept = [modules[n] for n in (*outputs, *ignored)]
    with quiet_torch_pruning():
        all_groups = list(dg.get_all_groups(ignored_layers=kept, root_module_types=(nn.Conv2d, nn.Linear)))
    for group in all_groups:
        root = group[0].dep.target.module
        members, sources, couplings = [], [], []
        channel_groups = 1
        for item in group:
            module, handler = item.dep.target.module, item.dep.handler
            if not isinstance(module, nn.Module) or module not in names:
                continue
            side = "out" if dg.is_out_channel_pruning_fn(handler) else "in" if dg.is_in_channel_pruning_fn(handler) else None
            if side is not None:
                couplings.append((names[module], side, len(item.idxs)))
            pruner = dg.get_pruner_of_module(module)
            if pruner is not None and not (isinstance(module, nn.Conv2d) and module.groups == module.out_channels):
                fn = pruner.get_out_channel_groups if dg.is_out_channel_pruning_fn(handler) else pruner.get_in_channel_groups
                channel_groups = max(channel_groups, int(fn(module)))
            if dg.is_out_channel_pruning_fn(handler) and isinstance(module, layer_types):
                members.append(names[module])
            if dg.is_in_channel_pruning_fn(handler) and isinstance(module, _LAYERS):
                sources.append(
                    FeatureSource(
                        names[module],
                        "input",
                        torch.as_tensor(item.idxs, dtype=torch.long),
                        torch.as_tensor(item.root_idxs, dtype=torch.long),
                        channel_dim=-1 if isinstance(module, nn.Linear) else 1,
                    )
                )
        channels = dg.get_pruner_of_module(root).get_out_channels(root)
        members = sorted(set(members), key=order.index)
        # Name a group after its first member in module order, so names do not depend on tracing order.
        couplings = sorted(set(couplings), key=lambda c: (order.index(c[0]), c[1]))
        groups.append(ChannelGroup(members[0], int(channels), members, sources, channel_groups, couplings))
    groups.sort(key=lambda g: order.index(g.name))
    return dg, groups, outputs


def prunable_groups(
    model: nn.Module, spec: ModelSpec, ignored: Sequence[str] | None = None
) -> tuple[tp.DependencyGraph, list[ChannelGroup], list[str]]:
    """Trace ``model`` and return (dependency graph, coupled channel groups, output layers).

    Groups whose maps the spec says are taken elsewhere (the paper's VGG) are pointed at them.
    """
    if spec.unsupported:
        raise ChipPruneError(f"{spec.name} cannot be pruned: {spec.unsupported}")
    names = set(dict(model.named_modules()))
    unknown = [n for n in ignored or [] if n not in names]
    if unknown:
        raise ChipPruneError(f"--ignore names no layer of the model: {', '.join(unknown)}")
    was_training = model.training
    model.eval()  # tracing runs the model; BatchNorm statistics must not move
    try:
        dg, groups, outputs = build_groups(model, spec.example_input(device_of(model)), list(ignored or []), spec.custom_pruners)
    finally:
        model.train(was_training)
    for g in groups:
        source = spec.feature_map(g.name) if spec.feature_map else None
        if source is not None:
            idx = torch.arange(g.channels)
            g.sources = [FeatureSource(source, "output", idx, idx)]
    if not outputs:
        raise ChipPruneError(f"found no output layer in {type(model).__name__}: no conv or linear layer's result reaches its outputs")
    return dg, groups, outputs


def classifier_outputs(model: nn.Module, classifier: str) -> int:
    """How many classes a classifier predicts: the width of its output layer ``classifier``."""
    layer = dict(model.named_modules())[classifier]
    return int(layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels)
