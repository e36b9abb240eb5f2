"""The training loop (fine-tuning, or training from scratch): AMP, checkpoints, resume, DDP.

One code path for CPU, one GPU and many (``torchrun``). Model selection uses a validation split
held out from the training images; the test split is evaluated once, at the end.

Reproducibility: the data order of every epoch comes from (seed, epoch); each image's augmentation
from (seed, epoch, image index), whichever process or loader worker draws it; other random draws of
a step (dropout) from (seed, epoch, step, rank). So a run resumed from a checkpoint repeats the
uninterrupted run exactly, and N processes under torchrun see the same augmented batches as one.
"""

from __future__ import annotations

import math

import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset
from tqdm.auto import tqdm

from ..data.sources import DataSource
from ..data.transforms import SeededAugmentation, make_transform
from ..errors import ChipPruneError
from ..evaluation.metrics import check_labels, evaluate
from ..io.atomic import save_state_dict
from ..io.weights import load_weights
from ..models.spec import ModelSpec
from ..results import FitSummary
from ..runtime import Dist, all_reduce_sum, autocast, broadcast_module
from .checkpoint import check_resumable, read_checkpoint, write_checkpoint, write_metrics
from .recipes import Recipe, build_scheduler

__all__ = ["TrainConfig", "fit"]


@dataclass
class TrainConfig:
    recipe: Recipe
    out: Path
    seed: int = 0
    val_fraction: float = 0.1
    amp: bool = True  # autocast on CUDA (off on the CPU)
    amp_dtype: str = "bf16"  # or "fp16", which also turns on loss scaling
    checkpoint_every_steps: int = 0  # 0: only at the end of each epoch
    resume: bool = False
    progress: bool = True
    limit_train_images: int | None = None  # for quick pilots; validation is limited alike
    overwrite: bool = False  # start over in an ``out`` that holds an earlier run
    source_weights: str | None = None  # SHA-256 of the weights trained from: a checkpoint of other weights is refused

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast type on CUDA, or None for full precision."""
        if not self.amp:
            return None
        return torch.float16 if self.amp_dtype == "fp16" else torch.bfloat16


class _FromPosition(Sampler):
    """The sampler's order, starting at position ``start`` (to resume inside an epoch)."""

    def __init__(self, base: DistributedSampler, start: int = 0) -> None:
        self.base, self.start = base, start

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.base)[self.start :])

    def __len__(self) -> int:
        return max(0, len(self.base) - self.start)


def _step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + step * 101 + rank) % (2**63)


@dataclass
class _Data:
    """The splits of one training run: augmented training images, validation and test loaders."""

    train: SeededAugmentation
    sampler: DistributedSampler
    per_rank_batch: int
    steps_per_epoch: int
    val: DataLoader | None
    val_images: int
    test: DataLoader


def _eval_loader(dataset: Dataset, dist_info: Dist) -> DataLoader:
    # Each process takes every world_size-th image: unlike DistributedSampler, no image is
    # repeated to even out the shares, so none counts twice.
    if dist_info.enabled:
        dataset = Subset(dataset, range(dist_info.rank, len(dataset), dist_info.world_size))
    return DataLoader(dataset, batch_size=256)


def _split_data(spec: ModelSpec, source: DataSource, config: TrainConfig, dist_info: Dist) -> _Data:
    """Training images minus a seeded validation share (and at most ``limit_train_images``), the test split."""
    recipe = config.recipe
    if recipe.batch_size % dist_info.world_size:
        raise ChipPruneError(f"batch size {recipe.batch_size} must be divisible by the {dist_info.world_size} processes")
    train_aug = source.split("train", make_transform(spec, True, source.image_size))
    train_plain = source.split("train", make_transform(spec, False, source.image_size))
    order = torch.randperm(len(train_aug), generator=torch.Generator().manual_seed(config.seed)).tolist()
    n_val = int(len(order) * config.val_fraction)
    val_idx, train_idx = order[:n_val], order[n_val:]
    if config.limit_train_images:  # a few-shot run: validation in proportion (it costs as much per image)
        train_idx = train_idx[: config.limit_train_images]
        n_val = min(n_val, max(1, round(config.limit_train_images * config.val_fraction))) if n_val else 0
        val_idx = val_idx[:n_val]
    if len(train_idx) < recipe.batch_size:
        raise ChipPruneError(f"{len(train_idx)} training images are fewer than one batch of {recipe.batch_size}; lower --train-batch-size")
    train = SeededAugmentation(Subset(train_aug, train_idx), config.seed)
    sampler = DistributedSampler(train, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=config.seed, drop_last=True)
    per_rank_batch = recipe.batch_size // dist_info.world_size
    return _Data(
        train, sampler, per_rank_batch, len(sampler) // per_rank_batch,
        _eval_loader(Subset(train_plain, val_idx), dist_info) if n_val else None, n_val,
        _eval_loader(source.split("test", make_transform(spec, False, source.image_size)), dist_info),
    )


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.SGD:
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BatchNorm and biases
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr, momentum=recipe.momentum,
    )


class _Trainer:
    """The state of one training run: model, optimiser, schedule, history, best epoch; and its steps."""

    def __init__(self, model: nn.Module, data: _Data, config: TrainConfig, dist_info: Dist) -> None:
        recipe, device = config.recipe, dist_info.device
        self.config, self.dist, self.data, self.device = config, dist_info, data, device
        self.out = Path(config.out)
        self.model = model.to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = (
            DistributedDataParallel(self.model, device_ids=[device] if device.type == "cuda" else None) if dist_info.enabled else self.model
        )
        self.optimizer = _optimizer(self.model, recipe)
        total_steps = data.steps_per_epoch * recipe.epochs
        self.scheduler = build_scheduler(self.optimizer, total_steps, int(round(recipe.warmup_epochs * data.steps_per_epoch)))
        # fp16 needs loss scaling against underflow; bf16 has float32's range and does not.
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.amp and config.amp_dtype == "fp16" and device.type == "cuda")
        self.loss = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        self.epoch, self.step, self.history, self.resumed_sums = 0, 0, [], None
        self.best = {"val_top1": -1.0, "epoch": -1}
        # What a checkpoint is only valid with: another schedule length, seed, split or precision would
        # silently continue a different run (e.g. put validation images into training).
        amp = str(config.autocast_dtype).replace("torch.", "") if device.type == "cuda" else "none"
        self.settings = {**asdict(recipe), "seed": config.seed, "val_fraction": config.val_fraction,
                         "limit_train_images": config.limit_train_images, "train_images": len(data.train), "amp": amp,
                         "source_weights": config.source_weights}

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def resume(self) -> None:
        """Continue from the checkpoint in ``out``, if there is one (refused when its settings differ)."""
        path = self.checkpoint_path
        if not path.is_file():
            if self.dist.is_main:
                print(f"no checkpoint at {path}; starting from the beginning")
            return
        ckpt = read_checkpoint(path)
        check_resumable(ckpt, self.settings, self.dist.world_size, path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step, self.history, self.best = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["history"], ckpt["best"]
        self.resumed_sums = ckpt.get("epoch_sums")
        if self.dist.is_main:
            print(f"resuming from {path}: epoch {self.epoch + 1}, step {self.step}")

    def save_checkpoint(self, epoch: int, step_in_epoch: int, epoch_sums: torch.Tensor | None = None) -> None:
        if not self.dist.is_main:
            return
        write_checkpoint(self.checkpoint_path, {
            "epoch_sums": epoch_sums if epoch_sums is not None else torch.zeros(3, dtype=torch.float64),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "history": self.history,
            "best": self.best,
            "settings": self.settings,  # the recipe and what else the run depends on
            "processes": self.dist.world_size,
        })

    def train_epoch(self, epoch: int, first: int) -> dict[str, Any]:
        """Steps ``first``.. of ``epoch``; the epoch's training loss and accuracy over all processes."""
        data, config = self.data, self.config
        data.sampler.set_epoch(epoch)
        data.train.epoch = epoch
        loader = DataLoader(data.train, batch_size=data.per_rank_batch, sampler=_FromPosition(data.sampler, first * data.per_rank_batch),
                            drop_last=True)
        self.net.train()
        sums = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
        if first and self.dist.is_main and self.resumed_sums is not None:
            sums += self.resumed_sums  # the steps of this epoch before the interruption (all processes')
        iterator = iter(loader)
        bar = tqdm(range(first, data.steps_per_epoch), desc=f"epoch {epoch + 1}/{config.recipe.epochs}",
                   disable=not (config.progress and self.dist.is_main), unit="step")
        started = time.perf_counter()
        for step in bar:
            sums += self.train_step(epoch, step, iterator)
            bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if config.checkpoint_every_steps and (epoch * data.steps_per_epoch + step + 1) % config.checkpoint_every_steps == 0:
                # The epoch's training loss and accuracy so far, over all processes, survive a resume too.
                self.save_checkpoint(epoch, step + 1, all_reduce_sum(sums.clone().to(self.device)).cpu())  # a copy: sums stays this process's
        sums = all_reduce_sum(sums.to(self.device)).cpu()
        return {
            "epoch": epoch + 1,
            "train_loss": float(sums[0] / sums[2].clamp_min(1)),
            "train_top1": float(100 * sums[1] / sums[2].clamp_min(1)),
            "lr": self.scheduler.get_last_lr()[0],
            "seconds": round(time.perf_counter() - started, 2),
        }

    def train_step(self, epoch: int, step: int, batches: Iterator) -> torch.Tensor:
        """One optimiser step on the next batch; (loss * n, correct, n) of the batch."""
        torch.manual_seed(_step_seed(self.config.seed, epoch, step, self.dist.rank))
        images, labels = next(batches)
        x, y = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.config.autocast_dtype):
            logits = self.net(x)
            check_labels(logits.shape[1], labels)  # on the CPU copy: no device sync
            loss = self.loss(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        value = loss.item()
        if not math.isfinite(value):
            raise ChipPruneError(
                f"the training loss became {value} at epoch {epoch + 1}, step {step + 1}: training diverged (lower --lr) or the "
                "data or weights hold non-finite values; nothing of this run was saved after its last checkpoint"
            )
        return torch.tensor([value * y.numel(), (logits.argmax(1) == y).sum().item(), y.numel()], dtype=torch.float64)

    def evaluate(self, loader: DataLoader) -> dict[str, float]:
        # Every process evaluates process 0's weights and BatchNorm statistics (the ones saved), on the
        # unwrapped model: DDP's forward would expect every process to run as many batches.
        broadcast_module(self.model)
        return evaluate(self.model, loader, self.device, amp_dtype=self.config.autocast_dtype)

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Validate, keep the best weights, checkpoint, write the metrics."""
        if self.data.val is not None:
            val = self.evaluate(self.data.val)
            row.update(val_top1=val["top1"], val_top5=val["top5"])
            if val["top1"] > self.best["val_top1"]:
                self.best = {"val_top1": val["top1"], "epoch": row["epoch"]}
                if self.dist.is_main:
                    save_state_dict(self.model, self.out / "best.safetensors")
        self.history.append(row)
        self.save_checkpoint(row["epoch"], 0)
        if self.dist.is_main:
            write_metrics(self.out, self.history)

    def select_best(self) -> None:
        """Go back to the best validated weights, if validation chose an epoch."""
        if self.data.val is not None and self.best["epoch"] > 0:  # the same on every process (validation is all-reduced)
            # Only process 0 wrote best.safetensors, and other machines may not see its disk: it loads
            # the file, and the next evaluation hands the weights to the others.
            if self.dist.is_main:
                load_weights(self.model, self.out / "best.safetensors")


def fit(model: nn.Module, spec: ModelSpec, source: DataSource, config: TrainConfig, dist_info: Dist) -> FitSummary:
    """Train ``model`` on ``source``'s training split with ``config``; returns the run's summary.

    Writes into ``config.out`` (rank 0 only): ``checkpoint.pt`` after every epoch (atomically),
    ``metrics.csv`` / ``metrics.json``, ``best.safetensors``; ``model`` ends with the selected weights,
    which the caller saves with the pruning record and the report (io.pruned.write_pruned_files).
    """
    recipe = config.recipe
    if dist_info.is_main:
        Path(config.out).mkdir(parents=True, exist_ok=True)
    if 0 < recipe.epochs <= recipe.warmup_epochs and dist_info.is_main:
        warnings.warn(
            f"the {recipe.name} recipe warms up for {recipe.warmup_epochs:g} epochs, and only {recipe.epochs} were asked for: "
            "the learning rate never reaches its peak; set --warmup-epochs below --epochs"
        )
    data = _split_data(spec, source, config, dist_info)
    trainer = _Trainer(model, data, config, dist_info)
    if config.resume:
        trainer.resume()
    started = time.perf_counter()
    for epoch in range(trainer.epoch, recipe.epochs):
        trainer.end_epoch(trainer.train_epoch(epoch, trainer.step if epoch == trainer.epoch else 0))
    trainer.select_best()
    test = trainer.evaluate(data.test)  # NaN when there is no test split
    return FitSummary(
        recipe=asdict(recipe), seed=config.seed, processes=dist_info.world_size, train_images=len(data.train),
        val_images=data.val_images, selected_epoch=trainer.best["epoch"] if data.val is not None else recipe.epochs,
        best_val_top1=trainer.best["val_top1"] if data.val is not None else None, test_top1=test["top1"], test_top5=test["top5"],
        test_images=test["images"], train_seconds=round(time.perf_counter() - started, 1), history=trainer.history,
    )
