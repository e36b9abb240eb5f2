"""How fast the fine-tuning data paths and a fine-tuning epoch run, each against its baseline in the
same run (interleaved rounds; medians with the rounds' range).

1. CIFAR-size data, one core: the PIL path (per-image transforms under a forked generator, a
   DataLoader without workers; what chipprune used up to 0.3.0) against the in-memory path (one
   uint8 tensor, batches cropped, flipped and normalised in a few tensor operations).
2. An ImageFolder of 224-pixel JPEGs made here, two epochs: the old loader (PIL transforms to
   normalised floats, no workers) against today's (one persistent worker per core; torchvision
   decodes the JPEGs straight into uint8 tensors, which are augmented as such; batches normalised in
   the main process, on one thread); today's loader normalising on all threads instead of one;
   the same for evaluation (two passes); and, on one core, the decoding alone (PIL against
   torchvision, the same pixels), the augmentation alone, and the augmentation seeded per image by
   forking the global generator (the old way) against seeding its own.
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
from torch.utils.data import DataLoader
from torchvision import transforms

import chipprune
from chipprune.data import open_data
from chipprune.data.memory import memory_images
from chipprune.data.sources import read_image, read_image_tensor
from chipprune.data.transforms import BatchNormalizer, SeededAugmentation, augmentation, augmentation_seed, preprocessing
from chipprune.io.atomic import write_json
from chipprune.runtime import Dist
from chipprune.training import TrainConfig, fit, recipe_with
from chipprune.training import batches as batches_module
from chipprune.training.batches import _LoaderBatches, _LoaderEval, loader_workers

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


def pil_transform(spec, size: int) -> transforms.Compose:
    """The training transform chipprune used up to 0.3.0, on PIL images: the baseline of both data rows."""
    crop = [transforms.RandomCrop(size, padding=4)] if size <= 64 else [transforms.RandomResizedCrop(size)]
    return transforms.Compose(crop + [transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)])


class ForkedSeeding(torch.utils.data.Dataset):
    """The seeding chipprune used up to this work (the baselines' way): ``base`` applies its own
    transform, which draws from the global generator, forked and seeded for each image."""

    def __init__(self, base, seed: int, epoch: int = 0) -> None:
        self.base, self.seed, self.epoch = base, seed, epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(augmentation_seed(self.seed, self.epoch, i))
            return self.base[i]


def cifar_paths(n_rounds: int) -> dict:
    spec = chipprune.get_model_spec("cifar_resnet56")
    source = open_data("bundled")
    torch.set_num_threads(1)
    dataset = ForkedSeeding(source.split("train", pil_transform(spec, 32)), seed=0)
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


def jpeg_folder(images: int) -> Path:
    """A 4-class ImageFolder of 224-pixel JPEGs with texture at several scales (as photos have)."""
    root = Path(tempfile.mkdtemp(prefix="train-speed-jpeg-"))
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(4):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(images // 4 if split == "train" else 1):
                coarse = np.asarray(Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).resize((224, 224), Image.BICUBIC))
                textured = (coarse.astype(int) + rng.integers(-24, 24, coarse.shape)).clip(0, 255).astype(np.uint8)
                Image.fromarray(textured).save(root / split / f"c{c}" / f"{i}.jpg", quality=90)
    return root


def jpeg_paths(n_rounds: int, images: int = 512, epochs: int = 2, batch: int = 32) -> dict:
    """``epochs`` epochs of ``images`` per round: the old loader (PIL transforms, float images, no
    workers) against today's (torchvision decoding and uint8 augmentation in persistent workers,
    normalised per batch)."""
    spec = chipprune.get_model_spec("resnet18")
    source = open_data(jpeg_folder(images))
    old_set = ForkedSeeding(source.split("train", pil_transform(spec, spec.image_size)), seed=0)
    new_set = SeededAugmentation(source.split("train", None, tensors=True), augmentation(spec, None), seed=0)

    def old() -> float:
        def run() -> None:
            for epoch in range(epochs):
                old_set.epoch = epoch
                for _ in DataLoader(old_set, batch_size=batch, drop_last=True):
                    pass
        return rate(run, epochs * images)

    def new() -> float:
        batches = _LoaderBatches(new_set, spec, 0, batch, Dist(), torch.device("cpu"))

        def run() -> None:
            for epoch in range(epochs):
                for _ in batches.epoch(epoch, 0):
                    pass
        return rate(run, epochs * batches.steps_per_epoch * batch)

    label = f"ImageFolder 224 px JPEG, {epochs} epochs: no workers -> {loader_workers()} workers"
    return summary(label, *rounds(old, new, n_rounds)), source


def normalising_threads(n_rounds: int, source, epochs: int = 2, batch: int = 32) -> dict:
    """The loader path of the JPEG row as training runs it (each batch normalised on one thread
    while the workers keep every core busy) against the same path normalising on all threads."""
    spec = chipprune.get_model_spec("resnet18")
    dataset = SeededAugmentation(source.split("train", None, tensors=True), augmentation(spec, None), seed=0)
    normalize = batches_module._normalize

    def loader(all_threads: bool) -> float:
        if all_threads:
            batches_module._normalize = lambda normalizer, images, workers: normalize(normalizer, images, 0)
        try:
            batches = _LoaderBatches(dataset, spec, 0, batch, Dist(), torch.device("cpu"))
            return rate(lambda: [None for epoch in range(epochs) for _ in batches.epoch(epoch, 0)], epochs * batches.steps_per_epoch * batch)
        finally:
            batches_module._normalize = normalize

    return summary(f"JPEG loader, {loader_workers()} workers: normalised on all threads -> one",
                   *rounds(lambda: loader(True), lambda: loader(False), n_rounds))


def evaluation_paths(n_rounds: int, source, passes: int = 2) -> dict:
    """``passes`` evaluations of the folder's training images per round: the old evaluation loader
    (PIL resize and crop to normalised floats, no workers) against today's (the same PIL steps to
    uint8 in persistent workers, batches normalised in the main process)."""
    spec = chipprune.get_model_spec("resnet18")
    old_transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                        transforms.Normalize(spec.mean, spec.std)])
    old_set = source.split("train", old_transform)
    new_set = source.split("train", preprocessing(spec, None))
    n = len(old_set)

    def old() -> float:
        return rate(lambda: [None for _ in range(passes) for _ in DataLoader(old_set, batch_size=256)], passes * n)

    def new() -> float:
        batches = _LoaderEval(new_set, list(range(n)), spec, torch.device("cpu"))
        return rate(lambda: [None for _ in range(passes) for _ in batches], passes * n)

    return summary(f"evaluation 224 px JPEG, {passes} passes: no workers -> {loader_workers()} workers", *rounds(old, new, n_rounds))


def decoding_alone(n_rounds: int, source) -> dict:
    """One core: the folder's JPEGs decoded by PIL into a uint8 tensor (the old path, and
    ``read_image``) against ``read_image_tensor`` (torchvision's decoder; the pixels are equal)."""
    torch.set_num_threads(1)
    paths = [path for path, _ in source.split("train", None).samples[:128]]

    def old() -> float:
        return rate(lambda: [transforms.functional.pil_to_tensor(read_image(path)) for path in paths], len(paths))

    def new() -> float:
        return rate(lambda: [read_image_tensor(path) for path in paths], len(paths))

    row = summary("224 px JPEG decoding alone, one core: PIL -> torchvision", *rounds(old, new, n_rounds))
    torch.set_num_threads(os.cpu_count() or 1)
    return row


def augmentation_alone(n_rounds: int, source, batch: int = 32) -> dict:
    """One core, images already decoded: the old PIL transform against the uint8 augmentation plus
    its share of normalising a batch (decoding is the same in both and left out)."""
    spec = chipprune.get_model_spec("resnet18")
    torch.set_num_threads(1)
    decoded = [read_image(path) for path, _ in source.split("train", None).samples[:128]]
    old_transform, new_transform = pil_transform(spec, spec.image_size), augmentation(spec, None)
    normalize = BatchNormalizer(spec, torch.device("cpu"))

    def old() -> float:
        return rate(lambda: [torch.stack([old_transform(im) for im in decoded[i:i + batch]]) for i in range(0, len(decoded), batch)],
                    len(decoded))

    def new() -> float:
        return rate(lambda: [normalize(torch.stack([new_transform(im) for im in decoded[i:i + batch]]))
                             for i in range(0, len(decoded), batch)], len(decoded))

    row = summary("224 px augmentation alone, one core: PIL -> uint8 v2", *rounds(old, new, n_rounds))
    torch.set_num_threads(os.cpu_count() or 1)
    return row


def generator_fork(n_rounds: int, source) -> dict:
    """One core, JPEGs already decoded to tensors: the uint8 augmentation seeded per image the old
    way (the global generator forked and seeded around each image) against today's (the dataset's
    own generator seeded, the global one untouched)."""
    spec = chipprune.get_model_spec("resnet18")
    torch.set_num_threads(1)
    decoded = [(read_image_tensor(path), 0) for path, _ in source.split("train", None).samples[:128]]
    transform = augmentation(spec, None)

    class Augmented(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(decoded)

        def __getitem__(self, i: int):
            return transform(decoded[i][0]), 0

    forked, own = ForkedSeeding(Augmented(), seed=0), SeededAugmentation(decoded, transform, seed=0)

    def old() -> float:
        return rate(lambda: [forked[i] for i in range(len(decoded))], len(decoded))

    def new() -> float:
        return rate(lambda: [own[i] for i in range(len(decoded))], len(decoded))

    row = summary("224 px augmentation, one core: forked generator -> own", *rounds(old, new, n_rounds))
    torch.set_num_threads(os.cpu_count() or 1)
    return row


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
    jpeg_row, jpeg_source = jpeg_paths(args.rounds)
    rows = [cifar_paths(args.rounds), jpeg_row, normalising_threads(args.rounds, jpeg_source), evaluation_paths(args.rounds, jpeg_source), decoding_alone(args.rounds, jpeg_source),
            augmentation_alone(args.rounds, jpeg_source), generator_fork(args.rounds, jpeg_source), epoch_against_bare_loop(args.rounds, device)]
    print("(an epoch ratio below 1: chipprune's epoch is slower than the bare loop by that factor)")
    if args.out:
        write_json(args.out, {"machine": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
