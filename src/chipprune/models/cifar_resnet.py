"""CIFAR ResNets with the option-A (zero-padding) shortcut, as in He et al. (2016) and CHIP.

Module names, shortcut and initialisation follow the widely used reference implementation
(Yerlan Idelbayev's ``resnet_cifar10``) so its checkpoints load unchanged. The ReLUs are modules
(``relu1``, ``relu2``) so hooks can see the post-activation maps; they hold no parameters.

Declared here too (``MODELS``): their paper sparsity strings and the layers those strings name. The
option-A shortcut, ``PadShortcut``, and its pruner live in ``layers.py``.
"""

from __future__ import annotations

import re
from functools import partial

import torch
import torch.nn as nn

from .layers import PadShortcut
from .spec import IMAGENET_MEAN, IMAGENET_STD, LayoutEntry, ModelSpec

__all__ = ["BasicBlock", "CifarResNet", "cifar_resnet", "MODELS"]


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
    )
    for depth in (20, 32, 44, 56, 110)
]
