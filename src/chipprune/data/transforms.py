"""Preprocessing and loaders: the models' transforms, seeded augmentation, seeded loaders."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms

from ..models.spec import ModelSpec

__all__ = ["SeededAugmentation", "augmentation_seed", "make_transform", "make_loader"]


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of image ``index``'s augmentation in ``epoch`` (the PIL and the GPU-decoding paths draw from it)."""
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729) % (2**63)


class SeededAugmentation(Dataset):
    """Draws each image's random augmentation from a generator seeded by (seed, epoch, index), so the
    same image gets the same crop whichever process, worker or step loads it (exact resume, and
    torchrun runs equal to single-process ones)."""

    def __init__(self, base: Dataset, seed: int, epoch: int = 0) -> None:
        self.base, self.seed, self.epoch = base, seed, epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        with torch.random.fork_rng(devices=[]):
            # Only the CPU generator draws augmentations; torch.manual_seed would also queue CUDA
            # seeding on every image, which costs far more than the crop itself.
            torch.default_generator.manual_seed(augmentation_seed(self.seed, self.epoch, i))
            return self.base[i]


def make_transform(spec: ModelSpec, train: bool, native_size: int | None) -> Callable:
    """Preprocessing for ``spec``: CIFAR-style crop/flip at 32 px, ImageNet-style otherwise."""
    normalize = [transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)]
    size = spec.image_size
    if native_size is not None and native_size * 2 < size:
        warnings.warn(f"the data's {native_size}-pixel images are enlarged to {size} pixels for {spec.name}: a model trained on "
                      f"{size}-pixel photos sees little in them, so accuracies measured on this data say little about your own "
                      "(expect near chance for ImageNet weights); give --data with images like the model's")
    if size <= 64:
        resize = [] if native_size == size else [transforms.Resize((size, size))]
        aug = [transforms.RandomCrop(size, padding=4), transforms.RandomHorizontalFlip()] if train else []
        return transforms.Compose(resize + aug + normalize)
    if train:
        return transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()] + normalize)
    return transforms.Compose([transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size)] + normalize)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    limit: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader over at most ``limit`` images; shuffling is seeded so runs repeat exactly."""
    if limit is not None and limit < len(dataset):
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit]
        dataset = Subset(dataset, order.tolist())
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, generator=generator)
