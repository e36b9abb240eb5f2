"""Training images held in memory as one uint8 tensor on the training device and augmented there a
batch at a time: CIFAR-size data never goes through PIL or a DataLoader while training.

The augmentation is the one ``make_transform`` gives a 32-pixel model (4-pixel zero padding, random
crop, horizontal flip, normalisation), drawn per image from a hash of (seed, epoch, index): an
image's augmentation depends only on those three, whichever process, device or step takes it, so a
resumed run and a torchrun run see the same batches. Offsets come from integer arithmetic that is
the same on every device; the crop and flip are one gather for the whole batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..models.spec import ModelSpec
from .sources import ArrayDataset, DataSource, read_image
from .transforms import BatchNormalizer

__all__ = ["MemoryImages", "memory_images", "MAX_MEMORY_BYTES"]

MAX_MEMORY_BYTES = 4 * 2**30  # larger training sets go through a DataLoader
_PAD = 4
# splitmix64's constants, as signed 64-bit integers (torch's int64 arithmetic wraps around).
_GOLDEN, _MIX1, _MIX2 = -7046029254386353131, -4658895280553007687, -7723592293110705685


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 64-bit integer hash (splitmix64's finaliser; arithmetic shifts, the same on every device)."""
    x = x + _GOLDEN
    x = (x ^ (x >> 30)) * _MIX1
    x = (x ^ (x >> 27)) * _MIX2
    return x ^ (x >> 31)


def augmentation_draws(seed: int, epoch: int, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: crop offsets (0..2*pad) in y and x, and whether to flip, from (seed, epoch, index)."""
    # One hash per image, its digits in base 9, 9 and 2 the three draws: a hash per draw took 1.7x
    # as long (about 4% of a batch of 128 on a CPU core; every small tensor operation costs ~4 us).
    h = _mix(index.long() * 104_729 + (seed * 1_000_003 + epoch * 7_919)) & (2**62 - 1)
    span = 2 * _PAD + 1
    return h % span, (h // span) % span, (h // (span * span) % 2).bool()


class MemoryImages:
    """Images and their labels on one device, served as normalised batches. Given as (N, H, W, 3)
    uint8, held as (N, 3, H, W): a batch is then one row copy per image (``index_select``, 25x
    faster on a CPU core than advanced indexing of uint8) and gathers along contiguous rows."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, spec: ModelSpec, device: torch.device | None = None) -> None:
        device = images.device if device is None else device
        # Rearranged where the images are, then moved: a GPU never holds two copies.
        self.images = images.permute(0, 3, 1, 2).contiguous().to(device)
        self.labels = labels.to(device)
        self.normalize = BatchNormalizer(spec, device)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor, *, augment: bool, seed: int = 0, epoch: int = 0,
              draw_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``index`` as a float (B, 3, H, W) batch, augmented when ``augment``, and their labels.
        ``draw_index``: the numbers the augmentation is drawn from (default ``index``; a training run
        numbers its images among the training images, as the loader path does)."""
        index = index.to(self.images.device)
        x = torch.index_select(self.images, 0, index)  # (B, 3, H, W) uint8
        if augment:
            x = self._crop_and_flip(x, (index if draw_index is None else draw_index).to(x.device), seed, epoch)
        return self.normalize(x), torch.index_select(self.labels, 0, index)

    def _crop_and_flip(self, x: torch.Tensor, draws: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
        b, c, h, w = x.shape
        dy, dx, flip = augmentation_draws(seed, epoch, draws)
        padded = torch.nn.functional.pad(x, (_PAD, _PAD, _PAD, _PAD)).view(b, c, -1)
        rows = dy[:, None] + torch.arange(h, device=x.device)
        cols = dx[:, None] + torch.arange(w, device=x.device)
        cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip reads the columns backwards
        # Each output pixel's place in its padded image, the same for the three channels: one gather.
        pixels = (rows[:, :, None] * (w + 2 * _PAD) + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        return torch.gather(padded, 2, pixels).view(b, c, h, w)

    def batches(self, index: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Un-augmented batches of ``index`` in order (validation and test)."""
        for start in range(0, len(index), batch_size):
            yield self.batch(index[start : start + batch_size], augment=False)


def memory_images(source: DataSource, split: str, spec: ModelSpec, device: torch.device) -> MemoryImages | None:
    """``split`` of ``source`` in memory on ``device``, when its images have the model's own size
    (at most 64 pixels: the bundled sample, CIFAR-10 batches, a CIFAR-size ImageFolder, decoded
    once) and fit ``MAX_MEMORY_BYTES``; else None (the DataLoader path)."""
    if spec.image_size > 64:
        return None
    dataset = source.split(split, None)
    size = (spec.image_size, spec.image_size, 3)
    if isinstance(dataset, ArrayDataset):
        images, labels = np.ascontiguousarray(dataset.images), np.asarray(dataset.labels, dtype=np.int64)
    elif hasattr(dataset, "samples") and len(dataset.samples) * int(np.prod(size)) <= MAX_MEMORY_BYTES:
        images = _decode_all([path for path, _ in dataset.samples], size)
        labels = np.asarray([label for _, label in dataset.samples], dtype=np.int64)
    else:
        return None
    if images is None or images.ndim != 4 or images.shape[1:] != size or images.nbytes > MAX_MEMORY_BYTES:
        return None
    return MemoryImages(torch.from_numpy(images), torch.from_numpy(labels), spec, device)


def _decode_all(paths: list[str], size: tuple[int, int, int]) -> np.ndarray | None:
    """Every image as one uint8 array, or None as soon as one has another size. PIL decodes
    outside Python's lock, so threads share the work."""
    out = np.empty((len(paths), *size), dtype=np.uint8)

    def decode(i: int) -> bool:
        image = np.asarray(read_image(paths[i]))
        if image.shape != size:
            return False
        out[i] = image
        return True

    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return out if all(pool.map(decode, range(len(paths)))) else None
