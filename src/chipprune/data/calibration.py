"""Which images score the channels: the calibration settings and their loader."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader, Subset

from ..errors import ChipPruneError
from ..models.spec import ModelSpec
from ..runtime import world
from .sources import DataSource, open_data
from .transforms import SeededAugmentation, make_loader, make_transform

__all__ = ["Calibration"]


@dataclass
class Calibration:
    """Which images score the channels (the paper: 5 batches of 128 augmented training images)."""

    data: str | Path | None = None
    images: int = 640
    batch_size: int = 128
    seed: int = 0
    augment: bool = True
    require_all: bool = False  # stop, rather than use fewer images, when the data has fewer than `images`

    def loader(self, spec: ModelSpec, source: DataSource | None = None) -> DataLoader:
        """The calibration batches; under torchrun, this process's share of them."""
        source = source or open_data(self.data)
        dataset = source.split("train", make_transform(spec, self.augment, source.image_size))
        if len(dataset) == 0:
            raise ChipPruneError(f"{source.description}: the training split holds no images")
        if self.images > len(dataset) and self.require_all:
            raise ChipPruneError(
                f"{self.images} calibration images asked for, but {source.description} has {len(dataset)} training images"
            )
        if self.images > len(dataset):
            warnings.warn(f"{self.images} calibration images asked for, {source.description} has {len(dataset)}; using them all")
        loader = make_loader(SeededAugmentation(dataset, self.seed), self.batch_size, shuffle=False, limit=self.images, seed=self.seed)
        rank, processes = world()
        if processes > 1:
            if len(loader.dataset) < processes:
                raise ChipPruneError(
                    f"{len(loader.dataset)} calibration images cannot be shared among {processes} processes; "
                    "use more images or fewer processes"
                )
            # Under torchrun each process scores its share of the images; score sums are reduced.
            share = list(range(len(loader.dataset)))[rank::processes]
            loader = make_loader(Subset(loader.dataset, share), self.batch_size)
        return loader
