"""The training loop (fine-tuning, or training from scratch): AMP, checkpoints, resume, DDP.

One code path for CPU, one GPU and many (``torchrun``). Model selection uses a validation split
held out from the training images; the test split is evaluated once, at the end.

Reproducibility: the data order of every epoch comes from (seed, epoch); each image's augmentation
from (seed, epoch, image index), whichever process or loader worker draws it; other random draws of
a step (dropout) from (seed, epoch, step, rank). So a run resumed from a checkpoint repeats the
uninterrupted run exactly, and N processes under torchrun see the same augmented batches as one.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..data.sources import DataSource
from ..errors import ChipPruneError
from ..evaluation.metrics import check_labels, evaluate
from ..io.atomic import save_state_dict
from ..io.weights import load_weights
from ..models.spec import ModelSpec
from ..results import FitSummary
from ..runtime import Dist, all_reduce_sum, autocast, broadcast_module
from .batches import RunData, split_data
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
    compile: str = "auto"  # torch.compile mode for the training model: "auto", "off", "default", "reduce-overhead", "max-autotune"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast type on CUDA, or None for full precision."""
        if not self.amp:
            return None
        return torch.float16 if self.amp_dtype == "fp16" else torch.bfloat16


LOG_EVERY = 50  # on a GPU, steps between progress updates (each waits for the device)
# compile="auto" compiles (CUDA graphs) on CUDA for runs of at least this many steps. Measured on an
# H200 (docs/FINETUNING.md): pruned ResNet-56 at batch 256 takes 27 ms a step eager and 17 ms
# compiled, and compiling costs about 33 s, so it pays after about 3,400 steps.
COMPILE_PAYS_STEPS = 5000


def compile_mode(asked: str, device: torch.device, steps: int) -> str | None:
    """The torch.compile mode a run uses, or None: ``auto`` is reduce-overhead for long CUDA runs."""
    if asked == "auto":  # torch.compile on CUDA needs Triton; without it, auto stays eager
        pays = device.type == "cuda" and steps >= COMPILE_PAYS_STEPS and importlib.util.find_spec("triton") is not None
        return "reduce-overhead" if pays else None
    return None if asked == "off" else asked


def _step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + step * 101 + rank) % (2**63)


def _prepare_teacher(teacher: nn.Module | None, device: torch.device) -> nn.Module | None:
    """The teacher in inference form on ``device`` (a copy: the caller's model is left as it is)."""
    if teacher is None:
        return None
    teacher = copy.deepcopy(teacher).to(device).eval()
    if device.type == "cuda":
        teacher = teacher.to(memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


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

    def __init__(self, model: nn.Module, data: RunData, config: TrainConfig, dist_info: Dist, teacher: nn.Module | None = None) -> None:
        recipe, device = config.recipe, dist_info.device
        self.config, self.dist, self.data, self.device = config, dist_info, data, device
        self.out = Path(config.out)
        self.model = model.to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = (
            DistributedDataParallel(self.model, device_ids=[device] if device.type == "cuda" else None) if dist_info.enabled else self.model
        )
        mode = compile_mode(config.compile, device, data.train.steps_per_epoch * recipe.epochs)
        if mode is not None:
            # The first steps compile; self.model stays the plain module, which checkpoints and evaluation use.
            if dist_info.is_main:
                print(f"compiling the model for training (torch.compile, {mode}; --compile off skips it)")
            self.net = torch.compile(self.net, mode=mode)
        self.teacher = _prepare_teacher(teacher, device) if recipe.distill_weight > 0 else None
        if recipe.distill_weight > 0 and self.teacher is None:
            raise ChipPruneError("distillation (distill_weight > 0) needs the original model as the teacher")
        self.optimizer = _optimizer(self.model, recipe)
        steps = data.train.steps_per_epoch
        self.scheduler = build_scheduler(self.optimizer, steps * recipe.epochs, int(round(recipe.warmup_epochs * steps)))
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
        train, config = self.data.train, self.config
        self.net.train()
        # Running sums stay on the device: nothing waits for the device until a progress update
        # (every step on the CPU, where waiting costs nothing; every LOG_EVERY steps on a GPU).
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss * n, correct, n
        if first and self.dist.is_main and self.resumed_sums is not None:
            sums += self.resumed_sums.to(self.device)  # the steps of this epoch before the interruption (all processes')
        batches = train.epoch(epoch, first)
        bar = tqdm(range(first, train.steps_per_epoch), desc=f"epoch {epoch + 1}/{config.recipe.epochs}",
                   disable=not (config.progress and self.dist.is_main), unit="step")
        every = 1 if self.device.type == "cpu" else LOG_EVERY
        started = time.perf_counter()
        for step in bar:
            sums += self.train_step(epoch, step, batches)
            if (step + 1) % every == 0 or step + 1 == train.steps_per_epoch:
                self._check_loss(sums, epoch, step)
                bar.set_postfix(loss=f"{float(sums[0] / sums[2]):.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if config.checkpoint_every_steps and (epoch * train.steps_per_epoch + step + 1) % config.checkpoint_every_steps == 0:
                # The epoch's training loss and accuracy so far, over all processes, survive a resume too.
                self.save_checkpoint(epoch, step + 1, all_reduce_sum(sums.clone()).cpu())  # a copy: sums stays this process's
        sums = all_reduce_sum(sums).cpu()
        return {
            "epoch": epoch + 1,
            "train_loss": float(sums[0] / sums[2].clamp_min(1)),
            "train_top1": float(100 * sums[1] / sums[2].clamp_min(1)),
            "lr": self.scheduler.get_last_lr()[0],
            "seconds": round(time.perf_counter() - started, 2),
        }

    @staticmethod
    def _check_loss(sums: torch.Tensor, epoch: int, step: int) -> None:
        value = float(sums[0])
        if not math.isfinite(value):
            raise ChipPruneError(
                f"the training loss became {value} in epoch {epoch + 1} (by step {step + 1}): training diverged (lower --lr) or "
                "the data or weights hold non-finite values; nothing of this run was saved after its last checkpoint"
            )

    def train_step(self, epoch: int, step: int, batches: Iterator) -> torch.Tensor:
        """One optimiser step on the next batch; (loss * n, correct, n) of the batch, on the device."""
        torch.manual_seed(_step_seed(self.config.seed, epoch, step, self.dist.rank))
        images, labels = next(batches)
        # The labels' largest value, without waiting for the device: the CPU copy (loader path), or
        # the value found once for all the training images (memory path).
        known = self.data.train.max_label
        largest = labels if known is None else torch.tensor([known])
        x, y = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.config.autocast_dtype):
            logits = self.net(x)
            check_labels(logits.shape[1], largest)
            loss = self.loss(logits.float(), y)
            if self.teacher is not None:
                loss = self._with_distillation(loss, logits, x)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return torch.stack([loss.detach().double() * y.numel(), (logits.argmax(1) == y).sum().double(),
                            torch.full((), y.numel(), dtype=torch.float64, device=y.device)])  # a fill, not a host copy

    def _with_distillation(self, loss: torch.Tensor, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(1 - a) * cross-entropy + a * T^2 * KL(teacher || student) on temperature-softened logits
        (Hinton et al.; T^2 keeps the gradients' scale as T changes)."""
        recipe = self.config.recipe
        with torch.no_grad():
            teacher = self.teacher(x).float()
        t = recipe.distill_temperature
        kl = torch.nn.functional.kl_div(torch.log_softmax(logits.float() / t, 1), torch.log_softmax(teacher / t, 1),
                                        reduction="batchmean", log_target=True)
        return (1 - recipe.distill_weight) * loss + recipe.distill_weight * t * t * kl

    def evaluate(self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
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


def fit(model: nn.Module, spec: ModelSpec, source: DataSource, config: TrainConfig, dist_info: Dist,
        teacher: nn.Module | None = None) -> FitSummary:
    """Train ``model`` on ``source``'s training split with ``config``; returns the run's summary.
    ``teacher``: the model that teaches by distillation when the recipe's ``distill_weight`` > 0.

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
    data = split_data(spec, source, config.seed, recipe.batch_size, config.val_fraction, config.limit_train_images, dist_info)
    trainer = _Trainer(model, data, config, dist_info, teacher)
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
