"""The CIFAR VGG-16-BN used by HRank and CHIP (module names as in their code, so checkpoints load).

13 conv-BN-ReLU layers with max-pools as in VGG-16, a 2x2 average pool, then
Linear 512-512, BatchNorm1d, ReLU, Linear 512-num_classes.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

__all__ = ["CifarVGG", "cifar_vgg16_bn", "VGG16_CFG"]

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
