"""The data of one training run: the augmented training batches of each epoch, and the validation
and test batches.

Three paths, one contract (the order of an epoch comes from (seed, epoch); an image's augmentation
from (seed, epoch, its index among the training images)):

- in memory: data held as an array at the model's size (the bundled sample, CIFAR-10) sits on the
  training device as uint8 and is augmented there a batch at a time (data/memory.py); no PIL, no
  DataLoader, no copies per step;
- JPEGs on a GPU: a DataLoader's workers read the files and draw each image's crop; the GPU decodes
  and augments the batch (data/jpeg.py);
- loader: anything else goes through a DataLoader whose worker processes (one per core, up to 32)
  live for the whole run; each decodes an image and augments it as a uint8 tensor with a seeded
  generator, and the batch is normalised on the training device (pinned memory on CUDA; on one
  thread on the CPU).

Validation and test images not held in memory go the loader's way too: PIL resizes and crops them
in workers (started for each pass), uint8 to the device, normalised there.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from ..data.jpeg import JpegCrops, collate_jpegs, decode_batch, is_jpeg_folder
from ..data.memory import MemoryImages, memory_images
from ..data.sources import DataSource
from ..data.transforms import BatchNormalizer, SeededAugmentation, augmentation, preprocessing
from ..errors import ChipPruneError
from ..models.spec import ModelSpec
from ..runtime import Dist, one_math_thread

__all__ = ["RunData", "split_data", "loader_workers"]

_EVAL_BATCH = 256


def loader_workers() -> int:
    """DataLoader workers for the loader path: one per core this process may use (its share under
    torchrun), at most 32. (With 8 on a 16-core H200 machine, decoding 224-pixel JPEGs gave 1,247
    images/s against the 4,683 that a ResNet-50 training step takes: every core is needed,
    docs/FINETUNING.md.)"""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # torchrun's processes on this machine share the cores
    return max(0, min(32, cores // processes))


class _EpochPositions(Sampler):
    """The sampler's order of one epoch from position ``start`` (to resume inside an epoch), each
    position paired with the epoch: a DataLoader's persistent workers take the epoch from there."""

    def __init__(self, base: DistributedSampler) -> None:
        self.base, self.epoch, self.start = base, 0, 0

    def set(self, epoch: int, start: int) -> None:
        self.base.set_epoch(epoch)
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in list(self.base)[self.start :]])

    def __len__(self) -> int:
        return max(0, len(self.base) - self.start)


class _TrainBatches:
    """The training images of one process: ``epoch(e, first)`` gives the batches of steps first.. of epoch e."""

    def __init__(self, count: int, config_seed: int, per_rank_batch: int, dist_info: Dist) -> None:
        self.seed, self.per_rank_batch = config_seed, per_rank_batch
        # DistributedSampler only needs the length: it draws (seed, epoch)-seeded orders of range(count).
        self.sampler = DistributedSampler(range(count), num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True,
                                          seed=config_seed, drop_last=True)
        self.positions = _EpochPositions(self.sampler)
        self.images = count
        self.steps_per_epoch = len(self.sampler) // per_rank_batch
        self.max_label: int | None = None  # known up front (memory path): labels need no check per batch
        self._epoch_loader: DataLoader | None = None

    def __len__(self) -> int:
        return self.images

    def epoch(self, epoch: int, first: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def _loader(self, dataset: Dataset, epoch: int, first: int, **options) -> DataLoader:
        """The DataLoader of epoch ``epoch``'s batches from step ``first``: one for the whole run,
        whose worker processes persist across epochs (no start-up cost per epoch)."""
        self.positions.set(epoch, first * self.per_rank_batch)
        if self._epoch_loader is None:
            workers = loader_workers()
            self._epoch_loader = DataLoader(dataset, batch_size=self.per_rank_batch, sampler=self.positions, drop_last=True,
                                            num_workers=workers, prefetch_factor=4 if workers else None,
                                            persistent_workers=workers > 0, **options)
        return self._epoch_loader


class _LoaderBatches(_TrainBatches):
    """Workers decode and augment each image into a uint8 tensor; the batch is moved to the device
    (a quarter of the bytes of floats) and normalised there."""

    def __init__(self, dataset: SeededAugmentation, spec: ModelSpec, config_seed: int, per_rank_batch: int, dist_info: Dist,
                 device: torch.device) -> None:
        super().__init__(len(dataset), config_seed, per_rank_batch, dist_info)
        self.dataset, self.normalize = dataset, BatchNormalizer(spec, device)

    def epoch(self, epoch: int, first: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = self._loader(self.dataset, epoch, first, pin_memory=self.normalize.device.type == "cuda")
        yield from _normalized(loader, self.normalize)


class _JpegBatches(_TrainBatches):
    """A JPEG ImageFolder on a GPU: workers read the files and draw each image's crop (as the PIL
    path draws it), the GPU decodes and augments the batch (data/jpeg.py)."""

    def __init__(self, crops: JpegCrops, spec: ModelSpec, config_seed: int, per_rank_batch: int, dist_info: Dist,
                 device: torch.device) -> None:
        super().__init__(len(crops), config_seed, per_rank_batch, dist_info)
        self.crops, self.size, self.normalize = crops, spec.image_size, BatchNormalizer(spec, device)

    def epoch(self, epoch: int, first: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for data, lengths, boxes, labels in _from_workers(self._loader(self.crops, epoch, first, collate_fn=collate_jpegs)):
            yield decode_batch(data, lengths, boxes, self.size, self.normalize), labels


class _MemoryBatches(_TrainBatches):
    def __init__(self, memory: MemoryImages, index: torch.Tensor, config_seed: int, per_rank_batch: int, dist_info: Dist) -> None:
        super().__init__(len(index), config_seed, per_rank_batch, dist_info)
        self.memory, self.index = memory, index.to(memory.images.device)
        self.max_label = int(memory.labels[self.index].max()) if len(index) else -1

    def epoch(self, epoch: int, first: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch)
        order = torch.tensor(list(self.sampler), dtype=torch.long, device=self.index.device)
        b = self.per_rank_batch
        for step in range(first, self.steps_per_epoch):
            position = order[step * b : (step + 1) * b]  # positions among the training images: the augmentation's index
            images, labels = self.memory.batch(self.index[position], augment=True, seed=self.seed, epoch=epoch, draw_index=position)
            yield images, labels


class _MemoryEval:
    """Un-augmented batches of some images held in memory; iterable again and again."""

    def __init__(self, memory: MemoryImages, index: torch.Tensor) -> None:
        self.memory, self.index = memory, index.to(memory.images.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.memory.batches(self.index, _EVAL_BATCH)


@dataclass
class RunData:
    """The splits of one training run."""

    train: _TrainBatches
    val: Iterable[tuple[torch.Tensor, torch.Tensor]] | None
    val_images: int
    test: Iterable[tuple[torch.Tensor, torch.Tensor]]
    in_memory: bool


def _share(index: list[int], dist_info: Dist) -> list[int]:
    # Each process evaluates every world_size-th image: unlike DistributedSampler, no image is
    # repeated to even out the shares, so none counts twice.
    return index[dist_info.rank :: dist_info.world_size] if dist_info.enabled else index


class _LoaderEval:
    """Un-augmented batches of ``index`` of ``dataset`` (uint8 images) in order, normalised on the
    device; iterable again and again. Its workers live for one pass only: each holds a copy of the
    dataset's file list (ImageNet's is large), and the training workers already persist."""

    def __init__(self, dataset: Dataset, index: list[int], spec: ModelSpec, device: torch.device) -> None:
        workers = loader_workers()
        self.loader = DataLoader(Subset(dataset, index), batch_size=_EVAL_BATCH, num_workers=workers,
                                 prefetch_factor=4 if workers else None, pin_memory=device.type == "cuda")
        self.normalize = BatchNormalizer(spec, device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return _normalized(self.loader, self.normalize)


def _normalized(batches: DataLoader, normalize: BatchNormalizer) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A DataLoader's uint8 image batches moved to ``normalize``'s device and normalised there;
    labels as they come."""
    for images, labels in _from_workers(batches):
        yield _normalize(normalize, images.to(normalize.device, non_blocking=True), batches.num_workers), labels


def _normalize(normalize: BatchNormalizer, images: torch.Tensor, workers: int) -> torch.Tensor:
    """``normalize(images)``; on one thread if the images are on the CPU and the loader has
    ``workers``. Its workers, one per core, keep every core busy: split over threads, the
    normalisation waits at its barrier for the thread that a worker has pushed off its core (the
    JPEG loader's bench row on one thread against all, docs/FINETUNING.md). The thread setting is
    restored before the training step runs."""
    if normalize.device.type != "cpu" or not workers:
        return normalize(images)
    with one_math_thread():
        return normalize(images)


def _from_workers(batches: Iterable) -> Iterator:
    """``batches`` of a DataLoader. A worker's ChipPruneError comes back rebuilt from the worker's
    whole traceback text: it is raised again with only its message, what the text ends with."""
    try:
        yield from batches
    except ChipPruneError as exc:
        text = str(exc)
        if not text.startswith("Caught ChipPruneError in DataLoader worker"):
            raise
        message = text.rstrip().rsplit(f"\n{ChipPruneError.__module__}.ChipPruneError: ", 1)[-1]
        # torch's rebuilt exception and the loader's frames hold each other: let go of the frames
        # now, so that the loader's workers are shut down at once, not at a later garbage
        # collection, when its queues may already be gone and each worker is waited for 5 s. The
        # exception stays as the cause: --debug shows the worker's traceback.
        exc.__traceback__ = None
        raise ChipPruneError(message) from exc


def split_data(spec: ModelSpec, source: DataSource, seed: int, batch_size: int, val_fraction: float, limit: int | None,
               dist_info: Dist) -> RunData:
    """Training images minus a seeded validation share (and at most ``limit`` training images, with
    validation in proportion), and the test split; in memory when the data allows."""
    if batch_size % dist_info.world_size:
        raise ChipPruneError(f"batch size {batch_size} must be divisible by the {dist_info.world_size} processes")
    device = dist_info.device
    memory = memory_images(source, "train", spec, device)
    plain = None if memory is not None else source.split("train", preprocessing(spec, source.image_size))
    count = len(memory) if memory is not None else len(plain)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = int(len(order) * val_fraction)
    val_idx, train_idx = order[:n_val], order[n_val:]
    if limit:  # a few-shot run: validation in proportion (it costs as much per image)
        train_idx = train_idx[:limit]
        n_val = min(n_val, max(1, round(limit * val_fraction))) if n_val else 0
        val_idx = val_idx[:n_val]
    if len(train_idx) < batch_size:
        raise ChipPruneError(f"{len(train_idx)} training images are fewer than one batch of {batch_size}; lower --train-batch-size")
    per_rank = batch_size // dist_info.world_size
    if memory is not None:
        test = memory_images(source, "test", spec, device)
        return RunData(
            _MemoryBatches(memory, torch.tensor(train_idx), seed, per_rank, dist_info),
            _MemoryEval(memory, torch.tensor(_share(val_idx, dist_info), dtype=torch.long)) if n_val else None, n_val,
            _MemoryEval(test, torch.tensor(_share(list(range(len(test))), dist_info), dtype=torch.long)) if test is not None
            else _test_loader(spec, source, dist_info), True,
        )
    samples = getattr(plain, "samples", None)
    if device.type == "cuda" and spec.image_size > 64 and samples is not None and is_jpeg_folder(samples):
        train: _TrainBatches = _JpegBatches(JpegCrops(samples, train_idx, seed), spec, seed, per_rank, dist_info, device)
    else:
        augmented = SeededAugmentation(Subset(source.split("train", None, tensors=True), train_idx), augmentation(spec, source.image_size), seed)
        train = _LoaderBatches(augmented, spec, seed, per_rank, dist_info, device)
    return RunData(
        train,
        _LoaderEval(plain, _share(val_idx, dist_info), spec, device) if n_val else None, n_val,
        _test_loader(spec, source, dist_info), False,
    )


def _test_loader(spec: ModelSpec, source: DataSource, dist_info: Dist) -> _LoaderEval:
    test_set = source.split("test", preprocessing(spec, source.image_size))
    return _LoaderEval(test_set, _share(list(range(len(test_set))), dist_info), spec, dist_info.device)
