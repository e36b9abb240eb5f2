from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def direct_channel_independence(maps: torch.Tensor) -> torch.Tensor:
    """The definition, evaluated literally in float64: one SVD per (image, channel)."""
    a = maps.reshape(maps.shape[0], maps.shape[1], -1).double()
    out = torch.zeros(a.shape[1], dtype=torch.float64)
    for img in a:
        full = torch.linalg.svdvals(img).sum()
        for j in range(img.shape[0]):
            masked = img.clone()
            masked[j] = 0
            out[j] += full - torch.linalg.svdvals(masked).sum()
    return out / a.shape[0]


@pytest.fixture
def shared() -> Path:
    if not (SHARED / "data" / "cifar10").is_dir():
        pytest.skip(f"real CIFAR-10 not present at {SHARED} (it is development data, not shipped)")
    return SHARED
