"""Training images held in memory as one uint8 tensor on the training device and augmented there a
batch at a time: CIFAR-size data never goes through PIL or a DataLoader while training.

The augmentation is the one ``make_transform`` gives a 32-pixel model (4-pixel zero padding, random
crop, horizontal flip, normalisation), drawn per image from a hash of (seed, epoch, index): an
image's augmentation depends only on those three, whichever process, device or step takes it, so a
resumed run and a torchrun run see the same batches. Offsets come from integer arithmetic that is
the same on every device; the crop is one gather for the whole batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..models.spec import ModelSpec
from .sources import ArrayDataset, DataSource, read_image

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
    h = _mix(index.long() * 104_729 + (seed * 1_000_003 + epoch * 7_919))
    h2 = _mix(h)
    h3 = _mix(h2)
    span = 2 * _PAD + 1
    return torch.remainder(h, span), torch.remainder(h2, span), torch.remainder(h3, 2).bool()


class MemoryImages:
    """(N, H, W, 3) uint8 images and their labels on one device, served as normalised batches."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, spec: ModelSpec) -> None:
        self.images, self.labels = images, labels
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(spec.mean, device=images.device).view(shape) * 255
        self.std = torch.tensor(spec.std, device=images.device).view(shape) * 255

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor, *, augment: bool, seed: int = 0, epoch: int = 0,
              draw_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``index`` as a float (B, 3, H, W) batch, augmented when ``augment``, and their labels.
        ``draw_index``: the numbers the augmentation is drawn from (default ``index``; a training run
        numbers its images among the training images, as the loader path does)."""
        index = index.to(self.images.device)
        x = self.images[index].permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
        if augment:
            x = self._crop_and_flip(x, (index if draw_index is None else draw_index).to(x.device), seed, epoch)
        return (x.float() - self.mean).div_(self.std), self.labels[index]

    def _crop_and_flip(self, x: torch.Tensor, draws: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
        b, c, h, w = x.shape
        dy, dx, flip = augmentation_draws(seed, epoch, draws)
        padded = torch.nn.functional.pad(x, (_PAD, _PAD, _PAD, _PAD))
        # Two gathers, rows then columns (1.6x faster on a CPU core than one four-index gather).
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, c, h, w + 2 * _PAD)
        cols = dx[:, None] + torch.arange(w, device=x.device)
        cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip reads the columns backwards
        return torch.gather(torch.gather(padded, 2, rows), 3, cols[:, None, None, :].expand(b, c, h, w))

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
    return MemoryImages(torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device), spec)


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
