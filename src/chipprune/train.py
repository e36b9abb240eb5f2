"""Fine-tuning (and training from scratch): the paper's recipe, AMP, checkpoints, resume, DDP.

One code path for CPU, one GPU and many (``torchrun``). Model selection uses a validation split
held out from the training images; the test split is evaluated once, at the end.

Reproducibility: the data order of every epoch comes from (seed, epoch); each image's augmentation
from (seed, epoch, image index), whichever process or loader worker draws it; other random draws of
a step (dropout) from (seed, epoch, step, rank). So a run resumed from a checkpoint repeats the
uninterrupted run exactly, and N processes under torchrun see the same augmented batches as one.
"""

from __future__ import annotations

import csv
import io
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler, Subset
from tqdm.auto import tqdm

from .data import DataSource, SeededAugmentation, make_transform
from .distributed import Dist, all_reduce_sum, broadcast_module
from .errors import ChipPruneError
from .files import atomic_write_bytes, save_state_dict, write_json
from .metrics import autocast, check_labels, evaluate
from .models.registry import ModelSpec

__all__ = ["Recipe", "RECIPES", "TrainConfig", "build_scheduler", "fit", "read_checkpoint"]


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule: SGD with momentum, linear warm-up then cosine decay to 0."""

    name: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_epochs: float
    label_smoothing: float = 0.0


# The CHIP paper's fine-tuning recipes (GUIDE.md section 1).
RECIPES = {
    "chip-cifar": Recipe("chip-cifar", epochs=400, batch_size=256, lr=0.01, momentum=0.9, weight_decay=0.005, warmup_epochs=5),
    "chip-imagenet": Recipe(
        "chip-imagenet", epochs=180, batch_size=256, lr=0.01, momentum=0.99, weight_decay=1e-4, warmup_epochs=0, label_smoothing=0.1
    ),
}


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """PyTorch's LinearLR + CosineAnnealingLR, stepped once per optimiser step: linear from base / warmup to
    base over the warm-up, then cosine from base to 0 at ``total_steps``."""
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    if warmup_steps <= 0:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup_steps, total_iters=warmup_steps - 1)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


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
    limit_train_images: int | None = None  # for quick pilots


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


def _amp_dtype(config: TrainConfig) -> torch.dtype | None:
    """The autocast type on CUDA, or None for full precision."""
    if not config.amp:
        return None
    return torch.float16 if config.amp_dtype == "fp16" else torch.bfloat16


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a training checkpoint without unpickling code (weights_only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt checkpoint gets one message
        raise ChipPruneError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); remove it to start over") from None


def fit(model: nn.Module, spec: ModelSpec, source: DataSource, config: TrainConfig, dist_info: Dist) -> dict[str, Any]:
    """Train ``model`` on ``source``'s training split with ``config``; returns the run's summary.

    Writes into ``config.out`` (rank 0 only): ``checkpoint.pt`` after every epoch (atomically),
    ``metrics.csv`` / ``metrics.json``, ``model.safetensors`` (the selected weights). The caller
    writes the pruning record and the report beside them.
    """
    recipe, device, out = config.recipe, dist_info.device, Path(config.out)
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if recipe.batch_size % dist_info.world_size:
        raise ChipPruneError(f"batch size {recipe.batch_size} must be divisible by the {dist_info.world_size} processes")
    per_rank_batch = recipe.batch_size // dist_info.world_size
    if 0 < recipe.epochs <= recipe.warmup_epochs and dist_info.is_main:
        warnings.warn(
            f"the {recipe.name} recipe warms up for {recipe.warmup_epochs:g} epochs, and only {recipe.epochs} were asked for: "
            "the learning rate never reaches its peak; set --warmup-epochs below --epochs"
        )

    train_aug = source.split("train", make_transform(spec, True, source.image_size))
    train_plain = source.split("train", make_transform(spec, False, source.image_size))
    test_set = source.split("test", make_transform(spec, False, source.image_size))
    order = torch.randperm(len(train_aug), generator=torch.Generator().manual_seed(config.seed)).tolist()
    n_val = int(len(order) * config.val_fraction)
    val_idx, train_idx = order[:n_val], order[n_val:]
    if config.limit_train_images:
        train_idx = train_idx[: config.limit_train_images]
    if len(train_idx) < recipe.batch_size:
        raise ChipPruneError(f"{len(train_idx)} training images are fewer than one batch of {recipe.batch_size}; lower --train-batch-size")
    train_subset = SeededAugmentation(Subset(train_aug, train_idx), config.seed)
    sampler = DistributedSampler(train_subset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=config.seed, drop_last=True)
    steps_per_epoch = len(sampler) // per_rank_batch
    total_steps = steps_per_epoch * recipe.epochs
    warmup_steps = int(round(recipe.warmup_epochs * steps_per_epoch))

    def eval_loader(dataset) -> DataLoader:
        # Each process takes every world_size-th image: unlike DistributedSampler, no image is
        # repeated to even out the shares, so none counts twice.
        if dist_info.enabled:
            dataset = Subset(dataset, range(dist_info.rank, len(dataset), dist_info.world_size))
        return DataLoader(dataset, batch_size=256)

    def evaluate_model(loader: DataLoader) -> dict[str, float]:
        # Every process evaluates process 0's weights and BatchNorm statistics (the ones saved), on the
        # unwrapped model: DDP's forward would expect every process to run as many batches.
        broadcast_module(model)
        return evaluate(model, loader, device, amp_dtype=_amp_dtype(config))

    val_loader = eval_loader(Subset(train_plain, val_idx)) if n_val else None

    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) if dist_info.enabled else model
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BatchNorm and biases
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr, momentum=recipe.momentum,
    )
    scheduler = build_scheduler(optimizer, total_steps, warmup_steps)
    # fp16 needs loss scaling against underflow; bf16 has float32's range and does not.
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and config.amp_dtype == "fp16" and device.type == "cuda")
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)

    start_epoch, start_step, history, resumed_sums = 0, 0, [], None
    best = {"val_top1": -1.0, "epoch": -1}
    ckpt_path = out / "checkpoint.pt"
    # What a checkpoint is only valid with: another schedule length, seed, split or precision would
    # silently continue a different run (e.g. put validation images into training).
    amp = str(_amp_dtype(config)).replace("torch.", "") if device.type == "cuda" else "none"
    settings = {**asdict(recipe), "seed": config.seed, "val_fraction": config.val_fraction,
                "limit_train_images": config.limit_train_images, "train_images": len(train_idx), "amp": amp}
    if config.resume and ckpt_path.is_file():
        ckpt = read_checkpoint(ckpt_path)
        _check_resumable(ckpt, settings, dist_info.world_size, ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_step, history, best = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["history"], ckpt["best"]
        resumed_sums = ckpt.get("epoch_sums")
        if dist_info.is_main:
            print(f"resuming from {ckpt_path}: epoch {start_epoch + 1}, step {start_step}")
    elif config.resume and dist_info.is_main:
        print(f"no checkpoint at {ckpt_path}; starting from the beginning")

    def save_checkpoint(epoch: int, step_in_epoch: int, epoch_sums: torch.Tensor | None = None) -> None:
        if not dist_info.is_main:
            return
        state = {
            "epoch_sums": epoch_sums if epoch_sums is not None else torch.zeros(3, dtype=torch.float64),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "history": history,
            "best": best,
            "settings": settings,  # the recipe and what else the run depends on
            "processes": dist_info.world_size,
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(ckpt_path, buffer.getvalue())

    t_start = time.perf_counter()
    for epoch in range(start_epoch, recipe.epochs):
        sampler.set_epoch(epoch)
        train_subset.epoch = epoch
        first = start_step if epoch == start_epoch else 0
        loader = DataLoader(train_subset, batch_size=per_rank_batch, sampler=_FromPosition(sampler, first * per_rank_batch), drop_last=True)
        net.train()
        sums = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
        if first and dist_info.is_main and resumed_sums is not None:
            sums += resumed_sums  # the steps of this epoch before the interruption (all processes')
        iterator = iter(loader)
        bar = tqdm(range(first, steps_per_epoch), desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not (config.progress and dist_info.is_main), unit="step")
        t_epoch = time.perf_counter()
        for step in bar:
            torch.manual_seed(_step_seed(config.seed, epoch, step, dist_info.rank))
            x, labels = next(iterator)
            x, y = x.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, _amp_dtype(config)):
                logits = net(x)
                check_labels(logits.shape[1], labels)  # on the CPU copy: no device sync
                loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            sums += torch.tensor([loss.item() * y.numel(), (logits.argmax(1) == y).sum().item(), y.numel()], dtype=torch.float64)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if config.checkpoint_every_steps and (epoch * steps_per_epoch + step + 1) % config.checkpoint_every_steps == 0:
                # The epoch's training loss and accuracy so far, over all processes, survive a resume too.
                save_checkpoint(epoch, step + 1, all_reduce_sum(sums.clone().to(device)).cpu())  # a copy: sums stays this process's
        sums = all_reduce_sum(sums.to(device)).cpu()
        row = {
            "epoch": epoch + 1,
            "train_loss": float(sums[0] / sums[2].clamp_min(1)),
            "train_top1": float(100 * sums[1] / sums[2].clamp_min(1)),
            "lr": scheduler.get_last_lr()[0],
            "seconds": round(time.perf_counter() - t_epoch, 2),
        }
        if val_loader is not None:
            val = evaluate_model(val_loader)
            row.update(val_top1=val["top1"], val_top5=val["top5"])
            if val["top1"] > best["val_top1"]:
                best = {"val_top1": val["top1"], "epoch": epoch + 1}
                if dist_info.is_main:
                    save_state_dict(model, out / "best.safetensors")
        history.append(row)
        save_checkpoint(epoch + 1, 0)
        if dist_info.is_main:
            _write_metrics(out, history)
        start_step = 0

    if val_loader is not None and best["epoch"] > 0:  # the same on every process (validation is all-reduced)
        # Only process 0 wrote best.safetensors, and other machines may not see its disk: it loads
        # the file, and evaluate_model hands the weights to the others.
        if dist_info.is_main:
            from .weights import load_weights

            load_weights(model, out / "best.safetensors")
    test = evaluate_model(eval_loader(test_set))  # NaN when there is no test split
    if dist_info.is_main:
        save_state_dict(model, out / "model.safetensors")
    return {
        "recipe": asdict(recipe),
        "seed": config.seed,
        "processes": dist_info.world_size,
        "train_images": len(train_idx),
        "val_images": n_val,
        "selected_epoch": best["epoch"] if val_loader is not None else recipe.epochs,
        "best_val_top1": best["val_top1"] if val_loader is not None else None,
        "test_top1": test["top1"],
        "test_top5": test["top5"],
        "test_images": test["images"],
        "train_seconds": round(time.perf_counter() - t_start, 1),
        "history": history,
    }


def _check_resumable(ckpt: dict[str, Any], settings: dict[str, Any], processes: int, path: Path) -> None:
    """Refuse a checkpoint written with other settings (older checkpoints record only the recipe)."""
    saved = ckpt.get("settings", ckpt.get("recipe", {}))
    changed = [f"{k} {saved[k]!r} -> {v!r}" for k, v in settings.items() if k in saved and saved[k] != v]
    if ckpt.get("step_in_epoch", 0) and ckpt.get("processes", processes) != processes:
        # Inside an epoch the remaining images depend on how they were shared out.
        changed.append(f"processes {ckpt['processes']} -> {processes} (allowed only at an epoch's end)")
    if changed:
        raise ChipPruneError(
            f"{path} belongs to a run with other settings ({'; '.join(changed)}); "
            "resume with the same settings, or remove it (or choose another --out) to start over"
        )


def _write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    write_json(out / "metrics.json", history)
    fields = sorted({k for row in history for k in row}, key=lambda k: list(history[-1]).index(k) if k in history[-1] else 99)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(out / "metrics.csv", buffer.getvalue().encode())


def recipe_with(name: str, **overrides: Any) -> Recipe:
    """A named recipe with the given fields replaced (None leaves a field as it is)."""
    if name not in RECIPES:
        raise ChipPruneError(f"unknown recipe '{name}'; choose from {', '.join(RECIPES)}")
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})
