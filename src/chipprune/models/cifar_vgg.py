"""The CIFAR VGG-16-BN used by HRank and CHIP (module names as in their code, so checkpoints load).

13 conv-BN-ReLU layers with max-pools as in VGG-16, a 2x2 average pool, then
Linear 512-512, BatchNorm1d, ReLU, Linear 512-num_classes.

Declared here too (``MODELS``): the paper's sparsity string, the layers it names, and where the
official code takes its feature maps.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
import torch.nn as nn

from .spec import CIFAR_MEAN, CIFAR_STD, LayoutEntry, ModelSpec

__all__ = ["CifarVGG", "cifar_vgg16_bn", "VGG16_CFG", "MODELS"]

# Channels per conv, "M" for a max-pool. Module names use the index in this list (conv0, norm0, ...).
VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class CifarVGG(nn.Module):
    def __init__(self, cfg: list[int | str] = VGG16_CFG, num_classes: int = 10) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels = 3
        for i, x in enumerate(cfg):
            if x == "M":
                layers[f"pool{i}"] = nn.MaxPool2d(kernel_size=2, stride=2)
            else:
                layers[f"conv{i}"] = nn.Conv2d(in_channels, int(x), kernel_size=3, padding=1)
                layers[f"norm{i}"] = nn.BatchNorm2d(int(x))
                layers[f"relu{i}"] = nn.ReLU()
                in_channels = int(x)
        self.features = nn.Sequential(layers)
        self.avgpool = nn.AvgPool2d(2)
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("linear1", nn.Linear(in_channels, 512)),
                    ("norm1", nn.BatchNorm1d(512)),
                    ("relu1", nn.ReLU()),
                    ("linear2", nn.Linear(512, num_classes)),
                ]
            )
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def cifar_vgg16_bn(num_classes: int = 10) -> CifarVGG:
    return CifarVGG(VGG16_CFG, num_classes)


def paper_layout(model: nn.Module) -> list[LayoutEntry]:
    """The paper's VGG strings name the first 12 of the 13 convs; the last is not pruned."""
    convs = [n for n, _ in model.named_modules() if re.fullmatch(r"features\.conv\d+", n)]
    return [LayoutEntry(f"{c} (conv {i + 1})", (c,)) for i, c in enumerate(convs[:-1])]


def relu_output(group: str) -> str | None:
    """The official code scores each conv's ReLU output. Four convs feed a max-pool, so the next
    conv's input (the default map) would be the pooled one."""
    m = re.fullmatch(r"features\.conv(\d+)", group)
    return f"features.relu{m.group(1)}" if m else None


MODELS = [
    ModelSpec(
        name="cifar_vgg16_bn",
        factory=cifar_vgg16_bn,
        family="cifar_vgg",
        image_size=32,
        num_classes=10,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        notes="HRank/CHIP CIFAR variant",
        paper_sparsity="[0.21]*7+[0.75]*5",
        paper_layout=paper_layout,
        feature_map=relu_output,
    )
]
