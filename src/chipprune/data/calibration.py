"""Which images score the channels: the calibration settings and their loader."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Subset

from ..errors import ChipPruneError
from ..models.spec import ModelSpec
from ..runtime import world
from .sources import DataSource, open_data
from .transforms import SeededAugmentation, make_loader, make_transform

__all__ = ["Calibration", "ModelBatches", "calibration_batches"]


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
        dataset = source.split("train", None)
        if len(dataset) == 0:
            raise ChipPruneError(f"{source.description}: the training split holds no images")
        if self.images > len(dataset) and self.require_all:
            raise ChipPruneError(
                f"{self.images} calibration images asked for, but {source.description} has {len(dataset)} training images"
            )
        if self.images > len(dataset):
            warnings.warn(f"{self.images} calibration images asked for, {source.description} has {len(dataset)}; using them all")
        images = SeededAugmentation(dataset, make_transform(spec, self.augment, source.image_size), self.seed)
        loader = make_loader(images, self.batch_size, shuffle=False, limit=self.images, seed=self.seed)
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


class ModelBatches:
    """(model input, label) pairs: what scoring and BatchNorm re-estimation read. With a ``spec``, from
    (images, labels) batches, the images as the model takes them (a list for torchvision's detectors);
    without, from a user's own inputs, passed as they are, with no labels."""

    def __init__(self, batches: Iterable, spec: ModelSpec | None = None) -> None:
        self.batches, self.spec = batches, spec

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for batch in self.batches:
            if self.spec is None:
                yield batch, None
            else:
                x, y = batch
                yield self.spec.model_input(x), y

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


def calibration_batches(calibration: Calibration | Iterable, spec: ModelSpec, source: DataSource | None = None) -> ModelBatches:
    """The batches that score the channels: a ``Calibration``'s images as ``spec``'s model takes them, or
    a user's iterable of model inputs (read more than once: a list or a DataLoader, not a generator)."""
    if isinstance(calibration, Calibration):
        return ModelBatches(calibration.loader(spec, source), spec)
    if isinstance(calibration, Iterator) or not isinstance(calibration, Iterable):
        raise ChipPruneError(
            "calibration must be a Calibration, or an iterable of model inputs that can be read more than once "
            f"(a list or a DataLoader); got {type(calibration).__name__}"
        )
    return ModelBatches(calibration)
