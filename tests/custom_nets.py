"""A user-defined network for tests: concatenation, depthwise conv and a residual add."""

import torch
import torch.nn as nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.branch_a = nn.Sequential(nn.Conv2d(16, 12, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.branch_b = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),  # depthwise
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 12, 1, bias=False),
            nn.BatchNorm2d(12),
            nn.ReLU(),
        )
        self.fuse = nn.Sequential(nn.Conv2d(24, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)  # concatenation
        x = self.relu(x + self.fuse(y))  # residual add
        return self.head(x)


def tiny_net() -> nn.Module:
    return TinyNet()


class PlainNet(nn.Module):
    """No BatchNorm: its gradients do not depend on how a batch is split across processes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def plain_net() -> nn.Module:
    return PlainNet()
