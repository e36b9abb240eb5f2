"""CIFAR ResNets with the option-A (zero-padding) shortcut, as in He et al. (2016) and CHIP.

Module names, shortcut and initialisation follow the widely used reference implementation
(Yerlan Idelbayev's ``resnet_cifar10``) so its checkpoints load unchanged. The ReLUs are modules
(``relu1``, ``relu2``) so hooks can see the post-activation maps; they hold no parameters.

Declared here too (``MODELS``): their paper sparsity strings and the layers those strings name, and
the Torch-Pruning pruner that keeps the option-A shortcut's channels aligned.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn
import torch_pruning as tp

from .spec import IMAGENET_MEAN, IMAGENET_STD, LayoutEntry, ModelSpec

__all__ = ["PadShortcut", "PadShortcutPruner", "BasicBlock", "CifarResNet", "cifar_resnet", "MODELS"]


def _pad_gather(x: torch.Tensor, gather_index: torch.Tensor, stride: int) -> torch.Tensor:
    x = x[:, :, ::stride, ::stride]
    # One gather from the input plus a zero channel: exportable and free of in-place writes.
    padded = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2], x.shape[3])], dim=1)
    return padded.index_select(1, gather_index)


class _PadGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, gather_index: torch.Tensor, stride: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(gather_index)
        ctx.stride, ctx.in_shape = stride, x.shape
        return _pad_gather(x, gather_index, stride)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (gather_index,) = ctx.saved_tensors
        n, c, h, w = ctx.in_shape
        sub = grad_out.new_zeros(n, c + 1, grad_out.shape[2], grad_out.shape[3])
        sub.index_add_(1, gather_index, grad_out)
        grad_x = grad_out.new_zeros(n, c, h, w)
        grad_x[:, :, :: ctx.stride, :: ctx.stride] = sub[:, :c]
        return grad_x, None, None


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride``, then place input channels at fixed output slots.

    Unpruned, input channel ``i`` lands on output channel ``i + pad`` and the other slots are zero,
    exactly ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))``. Pruning keeps this mapping
    explicit (``dst_index[i]`` is where input channel ``i`` goes, or -1 if its slot was removed),
    so the channels of two residual stages stay aligned however each stage is pruned.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        pad = (out_channels - in_channels) // 2
        self.stride = stride
        self.out_channels = out_channels
        self.register_buffer("dst_index", torch.arange(in_channels) + pad, persistent=False)

    @property
    def in_channels(self) -> int:
        return int(self.dst_index.numel())

    def _gather_index(self) -> torch.Tensor:
        # For each output slot, the input channel that feeds it, or `in_channels` (a zero channel).
        src = torch.full((self.out_channels,), self.in_channels, dtype=torch.long, device=self.dst_index.device)
        live = self.dst_index >= 0
        src[self.dst_index[live]] = torch.arange(self.in_channels, device=src.device)[live]
        return src

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            # One autograd node from input to output, so Torch-Pruning's tracer sees this module as
            # a single layer (it would otherwise follow the cat/index ops inside).
            return _PadGather.apply(x, self._gather_index(), self.stride)
        return _pad_gather(x, self._gather_index(), self.stride)

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = PadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


def _kaiming_init(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        nn.init.kaiming_normal_(m.weight)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images: stages of 16/32/64 channels, ``n`` basic blocks each."""

    def __init__(self, num_blocks: int, num_classes: int = 10) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(16, num_blocks, stride=1)
        self.layer2 = self._make_layer(32, num_blocks, stride=2)
        self.layer3 = self._make_layer(64, num_blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        self.apply(_kaiming_init)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(self.avgpool(out), 1)
        return self.linear(out)


def cifar_resnet(depth: int, num_classes: int = 10) -> CifarResNet:
    """Build the CIFAR ResNet of the given depth (20, 32, 44, 56, 110, ...: depth = 6n + 2)."""
    if (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    return CifarResNet((depth - 2) // 6, num_classes)


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


def paper_layout(model: nn.Module) -> list[LayoutEntry]:
    """The entries of the paper's CIFAR ResNet strings (ResNet-56: 30): stem, stage-1 output,
    stage-2 output, then the inner conv of every block; stage-3 outputs are never pruned."""
    n_blocks = len([n for n, _ in model.named_modules() if re.fullmatch(r"layer1\.\d+", n)])
    entries = [
        LayoutEntry("stem conv1 (shares its channels with the stage-1 stream)", ("conv1",)),
        LayoutEntry("stage-1 output (residual stream)", ("layer1.0.conv2",)),
        LayoutEntry("stage-2 output (residual stream)", ("layer2.0.conv2",)),
    ]
    for stage in (1, 2, 3):
        entries += [LayoutEntry(f"layer{stage}.{b} inner conv", (f"layer{stage}.{b}.conv1",)) for b in range(n_blocks)]
    return entries


_PAPER_SPARSITY = {56: "[0.]+[0.15]*2+[0.4]*27", 110: "[0.]+[0.22]*2+[0.35]*18+[0.45]*36"}

MODELS = [
    ModelSpec(
        name=f"cifar_resnet{depth}",
        factory=partial(cifar_resnet, depth),
        family="cifar_resnet",
        image_size=32,
        num_classes=10,
        # The reference checkpoints were trained with ImageNet statistics (see their README).
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        bundled_weights="cifar_resnet56.safetensors" if depth == 56 else None,
        notes="option-A shortcut" + ("; bundled CIFAR-10 weights" if depth == 56 else ""),
        paper_sparsity=_PAPER_SPARSITY.get(depth),
        paper_layout=paper_layout,
        custom_pruners={PadShortcut: PadShortcutPruner()},
    )
    for depth in (20, 32, 44, 56, 110)
]
