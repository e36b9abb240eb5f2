"""Preprocessing and loaders: the models' transforms, seeded augmentation, seeded loaders."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..models.spec import ModelSpec

__all__ = ["Augmentation", "SeededAugmentation", "augmentation", "augmentation_seed", "flip_draw", "make_loader", "make_transform", "preprocessing",
           "resized_crop_box", "BatchNormalizer"]


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of image ``index``'s augmentation in ``epoch`` (the PIL and the GPU-decoding paths draw from it)."""
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729) % (2**63)


class SeededAugmentation(Dataset):
    """``base``'s (image, label) pairs, each image through ``augment(image, generator)`` with a
    generator seeded by (seed, epoch, index): the same image gets the same crop whichever process,
    worker or step loads it (exact resume, and torchrun runs equal to single-process ones). The
    generator is the dataset's own: the process's global one is neither read nor changed. (One
    generator per dataset object: read it from one thread at a time, as DataLoader workers do.)"""

    def __init__(self, base: Dataset, augment: Callable, seed: int, epoch: int = 0) -> None:
        self.base, self.augment, self.seed, self.epoch = base, augment, seed, epoch
        self.generator = torch.Generator()

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, item: int | tuple[int, int]):
        """Image ``item``, or ``(epoch, index)``: a loader's workers that live across epochs are
        told the epoch with each index (their copy of ``self.epoch`` would be stale)."""
        epoch, i = item if isinstance(item, tuple) else (self.epoch, item)
        image, label = self.base[i]
        self.generator.manual_seed(augmentation_seed(self.seed, epoch, i))
        return self.augment(image, self.generator), label


def resized_crop_box(height: int, width: int, generator: torch.Generator | None = None,
                     scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (top, left, height, width) for an image of ``height`` x
    ``width``, drawn from ``generator`` (the global one if None): its draws, step by step, so a seed
    gives torchvision's crop (tested against it)."""
    area, log_ratio = height * width, torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        w, h = int(round(math.sqrt(target_area * aspect_ratio))), int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator))
            return top, int(torch.randint(0, width - w + 1, size=(1,), generator=generator)), h, w
    # Ten misses (a very long or tall image): the largest centred crop within the ratios.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def flip_draw(generator: torch.Generator | None = None) -> bool:
    """RandomHorizontalFlip's draw (p = 0.5) from ``generator``."""
    return bool(torch.rand(1, generator=generator) < 0.5)


class Augmentation:
    """The training augmentation for a model of ``size`` pixels on uint8 tensors: an RGB PIL image or
    (3, H, W) uint8 tensor and a generator in, an augmented (3, S, S) uint8 tensor out, not yet
    normalised (``BatchNormalizer`` does that a batch at a time, on the training device).
    CIFAR-style at 32 px (4-pixel zero padding, random crop, flip), ImageNet-style otherwise
    (random resized crop, flip); the draws are torchvision's RandomCrop / RandomResizedCrop and
    RandomHorizontalFlip's, from the generator given (the global one if None).

    On uint8 tensors, with torchvision's v2 kernels (which resample uint8 directly), because it is
    what a loader worker spends its time on: the crop, resize and flip took half the time of PIL's
    crop and resize, ToTensor and Normalize, and a batch of uint8 crosses from the workers in a
    quarter of the bytes (docs/FINETUNING.md, bench/train_speed.py)."""

    def __init__(self, size: int, resize_first: bool) -> None:
        self.size, self.resize_first = size, resize_first

    def __call__(self, image: Image.Image | torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        image = F.pil_to_tensor(image) if isinstance(image, Image.Image) else image
        size = self.size
        if size <= 64:
            if self.resize_first:
                image = F.resize(image, [size, size], antialias=True)
            padded = F.pad(image, [4])
            height, width = padded.shape[-2:]
            top = int(torch.randint(0, height - size + 1, size=(), generator=generator)) if height > size else 0
            left = int(torch.randint(0, width - size + 1, size=(), generator=generator)) if width > size else 0
            image = F.crop(padded, top, left, size, size)
        else:
            top, left, h, w = resized_crop_box(image.shape[-2], image.shape[-1], generator)
            image = F.resized_crop(image, top, left, h, w, [size, size], antialias=True)
        return F.horizontal_flip(image) if flip_draw(generator) else image


def augmentation(spec: ModelSpec, native_size: int | None) -> Augmentation:
    """``spec``'s training augmentation (``Augmentation``); ``native_size``: the data's image size
    when known (at 32 px, images of another size are first resized)."""
    _warn_if_enlarged(spec, native_size)
    return Augmentation(spec.image_size, native_size != spec.image_size)


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


class _ModelInput:
    """A uint8 transform's output as the model's normalised float input, per image."""

    def __init__(self, spec: ModelSpec, uint8: Callable) -> None:
        self.uint8, self.draws = uint8, isinstance(uint8, Augmentation)  # only the augmentation draws
        self.to_float = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)])

    def __call__(self, image: Image.Image | torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.to_float(self.uint8(image, generator) if self.draws else self.uint8(image))


def make_transform(spec: ModelSpec, train: bool, native_size: int | None) -> Callable:
    """Preprocessing of one PIL image for ``spec`` into a normalised float tensor: the training
    augmentation when ``train`` (drawn from the generator given as second argument, or the global
    one), else the evaluation preprocessing."""
    return _ModelInput(spec, augmentation(spec, native_size) if train else preprocessing(spec, native_size))


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
