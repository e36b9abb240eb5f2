"""How fast the fine-tuning data paths and a fine-tuning epoch run, each against its baseline in the
same run (interleaved rounds; medians with the rounds' range).

1. CIFAR-size data, one core: the PIL path (per-image transforms under a forked generator, a
   DataLoader without workers; what chipprune used up to 0.3.0) against the in-memory path (one
   uint8 tensor, batches cropped, flipped and normalised in a few tensor operations).
2. An ImageFolder of 224-pixel JPEGs made here: the old loader (no workers) against today's
   (one worker per core).
3. A fine-tuning epoch of pruned ResNet-56 (chipprune's `fit`, in-memory path) against a bare
   training loop over batches already in memory: the same model, optimiser, batch size and steps.

    python bench/train_speed.py [--rounds 3] [--device cpu|cuda] [--out docs/train_speed.json]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

import chipprune
from chipprune.data import make_transform, open_data
from chipprune.data.memory import memory_images
from chipprune.data.transforms import SeededAugmentation
from chipprune.io.atomic import write_json
from chipprune.runtime import Dist
from chipprune.training import TrainConfig, fit, recipe_with
from chipprune.training.batches import _LoaderBatches, loader_workers

SPARSITY = "[0.]+[0.15]*2+[0.4]*27"


def rate(run, images: int) -> float:
    started = time.perf_counter()
    run()
    return images / (time.perf_counter() - started)


def rounds(baseline, candidate, n: int) -> tuple[list[float], list[float]]:
    """Alternating timings (the order flips every round): images/s of each."""
    a, b = [], []
    for i in range(n):
        pair = [(a, baseline), (b, candidate)]
        for store, run in (pair if i % 2 == 0 else pair[::-1]):
            store.append(run())
    return a, b


def summary(label: str, a: list[float], b: list[float], unit: str = "images/s") -> dict:
    ratios = sorted(y / x for x, y in zip(a, b))
    row = {"what": label, "baseline": statistics.median(a), "candidate": statistics.median(b), "ratio": statistics.median(ratios),
           "ratio_low": ratios[0], "ratio_high": ratios[-1], "rounds": len(ratios), "unit": unit}
    print(f"{label:58} {row['baseline']:>10,.0f} {row['candidate']:>10,.0f} {unit:9} {row['ratio']:6.2f}x "
          f"[{row['ratio_low']:.2f}-{row['ratio_high']:.2f}]")
    return row


def cifar_paths(n_rounds: int) -> dict:
    spec = chipprune.get_model_spec("cifar_resnet56")
    source = open_data("bundled")
    torch.set_num_threads(1)
    dataset = SeededAugmentation(source.split("train", make_transform(spec, True, 32)), seed=0)
    memory = memory_images(source, "train", spec, torch.device("cpu"))
    n = len(dataset)

    def pil() -> float:
        return rate(lambda: [None for _ in DataLoader(dataset, batch_size=128)], n)

    def in_memory() -> float:
        index = torch.arange(n)
        return rate(lambda: [memory.batch(index[i:i + 128], augment=True, seed=0, epoch=0) for i in range(0, n, 128)], n)

    row = summary("CIFAR 32 px, one core: PIL path -> in memory", *rounds(pil, in_memory, n_rounds))
    torch.set_num_threads(os.cpu_count() or 1)
    return row


def jpeg_paths(n_rounds: int, images: int = 256) -> dict:
    spec = chipprune.get_model_spec("resnet18")
    root = Path(tempfile.mkdtemp(prefix="train-speed-jpeg-"))
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(4):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(images // 4 if split == "train" else 1):
                smooth = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(smooth).resize((224, 224), Image.BICUBIC).save(root / split / f"c{c}" / f"{i}.jpg", quality=90)
    source = open_data(root)
    train = SeededAugmentation(Subset(source.split("train", make_transform(spec, True, None)), list(range(images))), seed=0)

    def old() -> float:
        return rate(lambda: [None for _ in DataLoader(train, batch_size=32, drop_last=True)], images)

    def new() -> float:
        batches = _LoaderBatches(train, 0, 32, Dist(), torch.device("cpu"))
        return rate(lambda: [None for _ in batches.epoch(0, 0)], batches.steps_per_epoch * 32)

    return summary(f"ImageFolder 224 px JPEG: no workers -> {loader_workers()} workers", *rounds(old, new, n_rounds))


def epoch_against_bare_loop(n_rounds: int, device: torch.device) -> dict:
    model, spec = chipprune.load_model("cifar_resnet56", None)
    pruned = chipprune.prune(model, spec, SPARSITY, criterion="l1", evaluate_on=False, recalibrate_bn=False, progress=False).model
    source = open_data("bundled")
    batch, steps = 64, 10
    work = Path(tempfile.mkdtemp(prefix="train-speed-fit-"))
    recipe = recipe_with("chip-cifar", epochs=1, batch_size=batch, warmup_epochs=0)
    memory = memory_images(source, "train", spec, device)
    fixed = [memory.batch(torch.arange(i * batch, (i + 1) * batch), augment=True) for i in range(steps)]

    def chipprune_epoch() -> float:
        config = TrainConfig(recipe, work / str(time.perf_counter_ns()), val_fraction=0.0, progress=False,
                             limit_train_images=batch * steps)
        summary_ = fit(copy.deepcopy(pruned), spec, source, config, Dist(device=device))
        return batch * steps / summary_.history[0]["seconds"]

    def bare_loop() -> float:
        net = copy.deepcopy(pruned).to(device).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=0.005)
        loss_fn = torch.nn.CrossEntropyLoss()

        def run() -> None:
            for x, y in fixed:
                opt.zero_grad(set_to_none=True)
                loss_fn(net(x), y).backward()
                opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        return rate(run, batch * steps)

    return summary(f"pruned ResNet-56 epoch, {steps} x {batch}: bare loop -> chipprune fit", *rounds(bare_loop, chipprune_epoch, n_rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {device}")
    print(f"{'':58} {'baseline':>10} {'candidate':>10} {'':9} ratio [range over rounds]")
    rows = [cifar_paths(args.rounds), jpeg_paths(args.rounds), epoch_against_bare_loop(args.rounds, device)]
    print("(an epoch ratio below 1: chipprune's epoch is slower than the bare loop by that factor)")
    if args.out:
        write_json(args.out, {"machine": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
