"""CHIP vs L1 vs random on ResNet-56, each pruned at the paper's setting and fine-tuned on a short budget.

    python bench/finetune_compare.py [--shared ../shared] [--epochs 2] [--train-images 20000] [--out FILE]

Everything as chipprune does it: bundled ResNet-56 weights; criterion scores (CHIP on 640 augmented
training images of ../shared CIFAR-10); pruning at [0.]+[0.15]*2+[0.4]*27; BatchNorm re-estimation;
then the chip-cifar recipe shortened to --epochs on --train-images training images (no warm-up, cosine
over the short run), the epoch chosen on 10% held-out training images, and the 1,000 lossless test
images evaluated once. Same seed, same data order, same budget for every criterion.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import chipprune
from chipprune.data import open_data
from chipprune.runtime import Dist
from chipprune.training import TrainConfig, fit, recipe_with

SPARSITY = "[0.]+[0.15]*2+[0.4]*27"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=20000)
    parser.add_argument("--criteria", nargs="+", default=["chip", "l1", "random"])
    parser.add_argument("--workdir", type=Path, default=Path("bench-out/finetune_compare"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data = args.shared / "data" / "cifar10"
    source = open_data(data)
    rows = []
    for criterion in args.criteria:
        t0 = time.perf_counter()
        model, spec = chipprune.load_model("cifar_resnet56", "bundled")
        result = chipprune.prune(
            model, spec, SPARSITY, criterion=criterion, calibration=chipprune.Calibration(data=data), progress=False
        )
        r = result.report
        recipe = recipe_with("chip-cifar", epochs=args.epochs, warmup_epochs=0)
        config = TrainConfig(recipe, args.workdir / criterion, seed=0, limit_train_images=args.train_images, progress=False)
        summary = fit(result.model, spec, source, config, Dist())
        row = {
            "criterion": criterion,
            "params": r.params_after,
            "macs": r.macs_after,
            "top1_before": r.top1_before,
            "top1_pruned": r.top1_after,
            "top1_pruned_no_bn": r.top1_after_no_bn_recalibration,
            "top1_finetuned": summary.test_top1,
            "selected_epoch": summary.selected_epoch,
            "minutes": round((time.perf_counter() - t0) / 60, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nResNet-56, {SPARSITY}, fine-tuned {args.epochs} epochs on {args.train_images} images (1,000 test images)")
    print(f"{'criterion':10}{'params':>10}{'MACs':>13}{'pruned (no BN)':>16}{'pruned':>9}{'fine-tuned':>12}{'minutes':>9}")
    print(f"{'baseline':10}{853018:>10,}{125485696:>13,}{'':>16}{rows[0]['top1_before']:>9.1f}{'':>12}")
    for row in rows:
        print(
            f"{row['criterion']:10}{row['params']:>10,}{row['macs']:>13,}{row['top1_pruned_no_bn']:>16.1f}"
            f"{row['top1_pruned']:>9.1f}{row['top1_finetuned']:>12.1f}{row['minutes']:>9.1f}"
        )
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"machine: {machine}")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "epochs": args.epochs, "train_images": args.train_images, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
