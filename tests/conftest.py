from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


class EvilPickle:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def shared() -> Path:
    if not (SHARED / "data" / "cifar10").is_dir():
        pytest.skip(f"real CIFAR-10 not present at {SHARED} (it is development data, not shipped)")
    return SHARED
