"""Preprocessing and loaders: the models' transforms, seeded augmentation, seeded loaders."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms
from torchvision.transforms import v2

from ..models.spec import ModelSpec

__all__ = ["SeededAugmentation", "augmentation", "augmentation_seed", "make_loader", "make_transform", "preprocessing", "BatchNormalizer"]


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

    def __getitem__(self, item: int | tuple[int, int]):
        """Image ``item``, or ``(epoch, index)``: a loader's workers that live across epochs are
        told the epoch with each index (their copy of ``self.epoch`` would be stale)."""
        epoch, i = item if isinstance(item, tuple) else (self.epoch, item)
        with torch.random.fork_rng(devices=[]):
            # Only the CPU generator draws augmentations; torch.manual_seed would also queue CUDA
            # seeding on every image, which costs far more than the crop itself.
            torch.default_generator.manual_seed(augmentation_seed(self.seed, epoch, i))
            return self.base[i]


def augmentation(spec: ModelSpec, native_size: int | None) -> Callable:
    """The training augmentation for ``spec`` on uint8 tensors: an RGB PIL image or (3, H, W) uint8
    tensor in, an augmented (3, S, S) uint8 tensor out, not yet normalised (``BatchNormalizer`` does
    that a batch at a time, on the training device). CIFAR-style crop/flip at 32 px, ImageNet-style
    otherwise.

    On uint8 tensors, with torchvision's v2 transforms (which resample uint8 directly), because it
    is what a loader worker spends its time on: the crop, resize and flip took half the time of
    PIL's crop and resize, ToTensor and Normalize, and a batch of uint8 crosses from the workers in
    a quarter of the bytes (docs/FINETUNING.md, bench/train_speed.py). The draws are v1's: the
    same crop and flip for the same seed."""
    _warn_if_enlarged(spec, native_size)
    size = spec.image_size
    if size <= 64:
        resize = [] if native_size == size else [v2.Resize((size, size), antialias=True)]
        steps = resize + [v2.RandomCrop(size, padding=4)]
    else:
        steps = [v2.RandomResizedCrop(size, antialias=True)]  # v2 resamples uint8 without going through floats
    return v2.Compose([v2.PILToTensor(), *steps, v2.RandomHorizontalFlip()])


class BatchNormalizer:
    """(B, 3, H, W) uint8 batches on ``device`` to ``spec``'s normalised float input. The mean and std
    live on the device: a copy per batch would make a GPU step wait for the host."""

    def __init__(self, spec: ModelSpec, device: torch.device) -> None:
        self.device = device
        mean, std = torch.tensor(spec.mean, dtype=torch.float64) * 255, torch.tensor(spec.std, dtype=torch.float64) * 255
        # (x - mean) / std as x * scale + shift: on a CPU core a multiplication costs less than a
        # division, and the result differs by a few units in the last place.
        self.scale = (1 / std).float().view(1, 3, 1, 1).to(device)
        self.shift = (-mean / std).float().view(1, 3, 1, 1).to(device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # In place after the one conversion: a second fresh float tensor cost 1.5x on a CPU core.
        return images.float().mul_(self.scale).add_(self.shift)


def preprocessing(spec: ModelSpec, native_size: int | None) -> Callable:
    """The evaluation preprocessing for ``spec``: an RGB PIL image in, a (3, S, S) uint8 tensor out,
    not yet normalised. ImageNet-style resize and centre crop by PIL (the resampling torchvision's
    published accuracies were measured with); at 32 px only a resize when the data has another size."""
    _warn_if_enlarged(spec, native_size)
    size = spec.image_size
    if size <= 64:
        steps = [] if native_size == size else [transforms.Resize((size, size))]
    else:
        steps = [transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size)]
    return transforms.Compose([*steps, transforms.PILToTensor()])


def make_transform(spec: ModelSpec, train: bool, native_size: int | None) -> Callable:
    """Preprocessing of one PIL image for ``spec`` into a normalised float tensor: the training
    augmentation when ``train``, else the evaluation preprocessing."""
    uint8 = augmentation(spec, native_size) if train else preprocessing(spec, native_size)
    return v2.Compose([uint8, v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)])


def _warn_if_enlarged(spec: ModelSpec, native_size: int | None) -> None:
    size = spec.image_size
    if native_size is not None and native_size * 2 < size:
        warnings.warn(f"the data's {native_size}-pixel images are enlarged to {size} pixels for {spec.name}: a model trained on "
                      f"{size}-pixel photos sees little in them, so accuracies measured on this data say little about your own "
                      "(expect near chance for ImageNet weights); give --data with images like the model's")


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
