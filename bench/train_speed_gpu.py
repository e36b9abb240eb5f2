"""Fine-tuning throughput on a GPU, against the official CHIP loop's data path, in one run.

    python bench/train_speed_gpu.py [--images 50000] [--epochs 3] [--jpegs 2048] [--out DIR]

1. Pruned ResNet-56 (`[0.]+[0.15]*2+[0.4]*27`, CHIP's CIFAR setting) on CIFAR-size data: 50,000
   images made by tiling the bundled sample (real images; only throughput is measured here).
   - the official loop's way: a DataLoader with one worker per core running PIL transforms, float32,
     a `loss.item()` per step (the official code logs every step);
   - chipprune's `fit` (data held on the GPU as uint8 and augmented there), bf16 autocast and
     channels-last, eager and with `--compile` modes, at the recipe's batch of 256 and at 1,024.
   Each `fit` runs --epochs epochs; the first holds compilation and warm-up, the rest are timed
   (median epoch). The official loop is timed after 20 warm-up steps.
2. ResNet-50 at 224 on a synthetic folder of JPEGs (about ImageNet's size), one worker per core:
   images/s of the old loader (PIL transforms to floats), chipprune's loader (uint8 augmentation,
   normalised on the GPU) and chipprune's GPU-decoding path (data/jpeg.py), each over one epoch
   after a warm one; and a bf16 channels-last training step alone, the rate they must keep up with.

Writes train_speed_gpu.json under --out and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.transforms import v2

import chipprune
from chipprune.data.sources import ArrayDataset, DataSource, open_data
from chipprune.runtime import Dist
from chipprune.training import TrainConfig, fit, recipe_with
from chipprune.data.jpeg import JpegCrops
from chipprune.data.transforms import SeededAugmentation, augmentation
from chipprune.training.batches import _JpegBatches, _LoaderBatches, loader_workers
from train_speed import ForkedSeeding

SPARSITY = "[0.]+[0.15]*2+[0.4]*27"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
OFFICIAL_MEAN, OFFICIAL_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def synthetic_cifar(images: int) -> DataSource:
    bundled = open_data("bundled")
    train = bundled.split("train", None)
    reps = -(-images // len(train))
    x = np.concatenate([train.images] * reps)[:images]
    y = np.concatenate([train.labels] * reps)[:images]
    test = bundled.split("test", None)

    def build(split: str, transform, tensors: bool):
        return ArrayDataset(x, y, transform, tensors) if split == "train" else ArrayDataset(test.images, test.labels, transform, tensors)

    return DataSource(f"bundled sample tiled to {images} images", build, 32, 10)


def official_loop(model: torch.nn.Module, source: DataSource, batch: int, steps: int, device: torch.device) -> float:
    """images/s of the official CHIP CIFAR loop's structure: PIL transforms in DataLoader workers, fp32."""
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize(OFFICIAL_MEAN, OFFICIAL_STD)])
    loader = DataLoader(source.split("train", tf), batch_size=batch, shuffle=True, num_workers=loader_workers(), pin_memory=device.type == "cuda",
                        drop_last=True, persistent_workers=True)
    net = copy.deepcopy(model).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=0.005)
    loss_fn = torch.nn.CrossEntropyLoss()
    warmup, done, started = min(20, steps), 0, 0.0
    while done < warmup + steps:
        for x, y in loader:
            if done == warmup:
                sync(device)
                started = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = loss_fn(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()  # the official loop logs the loss of every step
            done += 1
            if done == warmup + steps:
                break
    sync(device)
    return steps * batch / (time.perf_counter() - started)


def chipprune_fit(model, spec, source, batch: int, epochs: int, compile_mode: str | None, amp: bool, device) -> dict:
    recipe = recipe_with("chip-cifar", epochs=epochs, batch_size=batch, warmup_epochs=0)
    out = Path(tempfile.mkdtemp(prefix="train-speed-gpu-"))
    config = TrainConfig(recipe, out, val_fraction=0.0, progress=False, amp=amp, compile=compile_mode or "off")
    summary = fit(copy.deepcopy(model), spec, source, config, Dist(device=device))
    per_epoch = summary.train_images // batch * batch
    rates = [per_epoch / row["seconds"] for row in summary.history]
    return {"first_epoch_s": summary.history[0]["seconds"], "images_per_s": statistics.median(rates[1:]),
            "epochs_timed": len(rates) - 1, "train_images": summary.train_images}


def cifar_rows(args, device) -> list[dict]:
    model, spec = chipprune.load_model("cifar_resnet56", None)
    pruned = chipprune.prune(model, spec, SPARSITY, criterion="l1", evaluate_on=False, recalibrate_bn=False, progress=False).model
    source = synthetic_cifar(args.images)
    rows = []
    if args.official_steps == 0:
        official = float("nan")
    else:
        official = official_loop(pruned, source, 256, args.official_steps, device)
    rows.append({"what": "official loop: PIL in DataLoader workers, fp32, batch 256", "images_per_s": official})
    print(f"{rows[-1]['what']:72} {official:>9,.0f}", flush=True)
    variants = []
    for item in args.variants.split(","):
        batch, mode = item.split(":")
        variants.append((int(batch), None if mode in ("fp32", "eager") else mode, mode != "fp32"))
    if device.type != "cuda":  # a smoke run of the script: no compilation
        variants = [v for v in variants if v[1] is None]
    for batch, mode, amp in variants:
        label = f"chipprune fit: data on GPU, {'bf16' if amp else 'fp32'}, {'compile ' + mode if mode else 'eager'}, batch {batch}"
        try:
            row = chipprune_fit(pruned, spec, source, batch, args.epochs, mode, amp, device)
        except Exception as exc:  # noqa: BLE001 - a mode that fails here is reported, the bench goes on
            print(f"{label:72} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", flush=True)
            rows.append({"what": label, "error": f"{type(exc).__name__}: {exc}"[:500]})
            continue
        row.update(what=label, ratio_to_official=row["images_per_s"] / official,
                   paper_400_epochs_min=400 * 50_000 / row["images_per_s"] / 60)
        rows.append(row)
        print(f"{label:72} {row['images_per_s']:>9,.0f}  {row['ratio_to_official']:5.2f}x  first epoch {row['first_epoch_s']:.1f} s  "
              f"400 epochs: {row['paper_400_epochs_min']:.1f} min", flush=True)
    return rows


def jpeg_folder(count: int) -> Path:
    root = Path(tempfile.mkdtemp(prefix="train-speed-jpegs-"))
    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("test", 8)):
        for c in range(8):
            (root / split / f"c{c}").mkdir(parents=True)
        for i in range(n):
            small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(root / split / f"c{i % 8}" / f"{i}.jpg", quality=90)
    return root


def _images_per_s(batches, device: torch.device) -> float:
    """One timed epoch of a chipprune training-batch path, after one that warms workers and caches."""
    for _ in batches.epoch(0, 0):
        pass
    sync(device)
    started = time.perf_counter()
    n = sum(x.shape[0] for x, _ in batches.epoch(1, 0))
    sync(device)
    return n / (time.perf_counter() - started)


def jpeg_rows(args, device) -> list[dict]:
    root = jpeg_folder(args.jpegs)
    spec = chipprune.get_model_spec("resnet50")
    source = open_data(root)
    dist = Dist(device=device)
    old_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                 transforms.Normalize(spec.mean, spec.std)])
    old = DataLoader(ForkedSeeding(source.split("train", old_tf), seed=0), batch_size=256, drop_last=True,
                     num_workers=loader_workers(), pin_memory=device.type == "cuda", persistent_workers=True)

    class _OldBatches:  # the loader before uint8 augmentation: PIL transforms to floats in the workers
        def epoch(self, epoch: int, first: int):
            for x, y in old:
                yield x.to(device, non_blocking=True), y

    train = SeededAugmentation(source.split("train", None, tensors=True), augmentation(spec, None), seed=0)
    loader_rate = _images_per_s(_LoaderBatches(train, spec, 0, 256, dist, device), device)
    old_rate = _images_per_s(_OldBatches(), device)
    samples = source.split("train", None).samples
    gpu_rate = _images_per_s(_JpegBatches(JpegCrops(samples, range(len(samples)), 0), spec, 0, 256, dist, device), device)

    model = torchvision.models.resnet50().to(device).to(memory_format=torch.channels_last).train()
    big = 256 if device.type == "cuda" else 8
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(big, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (big,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    sync(device)
    timed = 20 if device.type == "cuda" else 2
    started = time.perf_counter()
    for _ in range(timed):
        step()
    sync(device)
    step_rate = timed * big / (time.perf_counter() - started)
    workers = loader_workers()
    rows = [
        {"what": f"ResNet-50 224 px JPEGs: old loader, {workers} workers (PIL transforms to floats)", "images_per_s": old_rate},
        {"what": f"ResNet-50 224 px JPEGs: chipprune loader, {workers} workers (torchvision decoding, uint8 v2 augmentation)", "images_per_s": loader_rate},
        {"what": "ResNet-50 224 px JPEGs: chipprune GPU decoding (workers read files, nvJPEG + crops)", "images_per_s": gpu_rate},
        {"what": "ResNet-50 224 px: bf16 channels-last training step alone (random tensors), batch 256", "images_per_s": step_rate},
    ]
    for row in rows:
        print(f"{row['what']:90} {row['images_per_s']:>9,.0f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cpu only checks that the script runs")
    parser.add_argument("--images", type=int, default=30_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--official-steps", type=int, default=100)
    parser.add_argument("--jpegs", type=int, default=2048)
    parser.add_argument("--variants", default="256:fp32,256:eager,256:default,256:reduce-overhead,1024:default",
                        help="batch:mode of each chipprune fit (mode: fp32, eager (bf16), or a torch.compile mode)")
    parser.add_argument("--skip-jpeg", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    machine = f"{name}, {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"machine: {machine}", flush=True)
    result = {"machine": machine, "cifar": [], "jpeg": []}

    def save() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "train_speed_gpu.json").write_text(json.dumps(result, indent=2) + "\n")

    result["cifar"] = cifar_rows(args, device)
    save()
    if not args.skip_jpeg:
        result["jpeg"] = jpeg_rows(args, device)
        save()


if __name__ == "__main__":
    main()
