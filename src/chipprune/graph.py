"""Coupled channel groups of a model, from Torch-Pruning's dependency graph, and their surgery.

A *group* is a set of output channels that must be removed together: a conv's filters with its
BatchNorm and the next layers' input channels, or every conv that writes into one residual stream.
Each group is named after its root module (the first prunable conv of the group in module order).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp

from .errors import ChipPruneError
from .models.cifar_resnet import PadShortcut

__all__ = ["FeatureSource", "ChannelGroup", "build_groups", "prune_group", "find_classifier"]


class PadShortcutPruner(tp.pruner.BasePruningFunc):
    """Teaches Torch-Pruning the option-A shortcut: input and output channels are pruned separately
    (they belong to two different residual stages), and the input->output slot map stays exact."""

    TARGET_MODULES = PadShortcut

    def prune_out_channels(self, layer: PadShortcut, idxs: Sequence[int]) -> PadShortcut:
        removed = torch.as_tensor(sorted(set(int(i) for i in idxs)), dtype=torch.long)
        dst = layer.dst_index.clone()
        live = dst >= 0
        hit = torch.isin(dst, removed.to(dst.device)) & live
        # Each surviving slot moves down by the number of removed slots below it.
        shift = torch.searchsorted(removed.to(dst.device), dst.clamp_min(0))
        dst = torch.where(live, dst - shift, dst)
        dst[hit] = -1
        layer.dst_index = dst
        layer.out_channels -= len(removed)
        return layer

    def prune_in_channels(self, layer: PadShortcut, idxs: Sequence[int]) -> PadShortcut:
        removed = {int(j) for j in idxs}
        keep = [i for i in range(layer.in_channels) if i not in removed]
        layer.dst_index = layer.dst_index[torch.as_tensor(keep, dtype=torch.long, device=layer.dst_index.device)]
        return layer

    def get_out_channels(self, layer: PadShortcut) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: PadShortcut) -> int:
        return layer.in_channels


CUSTOM_PRUNERS = {PadShortcut: PadShortcutPruner()}


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


def find_classifier(model: nn.Module, example: torch.Tensor) -> str:
    """Name of the last Linear/Conv layer run in a forward pass: the classifier, never pruned."""
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


def build_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` on ``example`` into Torch-Pruning's dependency graph.

    Nothing is left out of the trace: ignored layers keep their output channels but must still
    lose input channels when the layers feeding them are pruned.
    """
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            # Parameters outside layers (ConvNeXt's layer_scale, shape (C, 1, 1)) are pruned along their
            # channel dimension, which is what we want; the notice about it is noise for our users.
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            return tp.DependencyGraph().build_dependency(model, example_inputs=example, customized_pruners=CUSTOM_PRUNERS)
    except (ArithmeticError, IndexError, KeyError, ValueError, RuntimeError, AssertionError) as exc:
        # Torch-Pruning 1.6 cannot follow some channel reorderings, e.g. ShuffleNetV2's channel shuffle.
        raise ChipPruneError(
            f"Torch-Pruning could not trace which channels of {type(model).__name__} are coupled "
            f"({type(exc).__name__}: {exc}). Models that reorder channels with reshapes (channel "
            "shuffle, as in ShuffleNetV2) cannot be pruned with Torch-Pruning 1.6; choose another architecture."
        ) from None


def build_groups(
    model: nn.Module, example: torch.Tensor, ignored: Sequence[str]
) -> tuple[tp.DependencyGraph, list[ChannelGroup]]:
    """All prunable channel groups of ``model`` (layers in ``ignored`` keep their output channels)."""
    dg = build_graph(model, example)
    names = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    order = list(modules)
    groups = []
    for group in dg.get_all_groups(ignored_layers=[modules[n] for n in ignored], root_module_types=(nn.Conv2d, nn.Linear)):
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
            if dg.is_out_channel_pruning_fn(handler) and isinstance(module, (nn.Conv2d, nn.Linear, PadShortcut)):
                members.append(names[module])
            if dg.is_in_channel_pruning_fn(handler) and isinstance(module, (nn.Conv2d, nn.Linear)):
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
    return dg, groups


def prune_group(dg: tp.DependencyGraph, model: nn.Module, group_name: str, remove: Sequence[int]) -> None:
    """Remove the channels ``remove`` (indices of the root's output channels) from a group, for real."""
    if len(remove) == 0:
        return
    root = dict(model.named_modules())[group_name]
    # The named member's own output channels are the group's channels (same order as the root's).
    pruner = dg.get_pruner_of_module(root)
    group = dg.get_pruning_group(root, pruner.prune_out_channels, sorted(int(i) for i in remove))
    group.prune()
