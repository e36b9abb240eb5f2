"""CIFAR ResNets with the option-A (zero-padding) shortcut, as in He et al. (2016) and CHIP.

Module names, shortcut and initialisation follow the widely used reference implementation
(Yerlan Idelbayev's ``resnet_cifar10``) so its checkpoints load unchanged. The ReLUs are modules
(``relu1``, ``relu2``) so hooks can see the post-activation maps; they hold no parameters.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["PadShortcut", "BasicBlock", "CifarResNet", "cifar_resnet"]


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
