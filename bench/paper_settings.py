"""Params, MACs and accuracy before/after CHIP pruning at the paper's settings, beside the paper's figures.

    python bench/paper_settings.py [--shared ../shared] [--out docs/paper_settings.json]

Models with pretrained weights in ../shared (ResNet-56) are scored on 640 augmented training images
of ../shared CIFAR-10 and evaluated on its 1,000 lossless test images, before and after pruning
(no fine-tuning; "after" has BatchNorm statistics re-estimated on the calibration images, and the
figure without that is shown too). Models without weights are pruned from random initialisation
on 64 images: only their sizes are meaningful. MACs: conv + linear multiply-accumulates.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import chipprune
from chipprune import Calibration

# (model, sparsity, paper params, paper MACs, paper top-1 after fine-tuning)
SETTINGS = [
    ("cifar_resnet56", "[0.]+[0.15]*2+[0.4]*27", "0.85M -> 0.48M", "125.49M -> 65.94M", "93.26 -> 94.16"),
    ("cifar_resnet56", "[0.]+[0.4]*2+[0.5]*9+[0.6]*9+[0.7]*9", "0.85M -> 0.24M", "125.49M -> 34.78M", "93.26 -> 92.43"),
    ("cifar_resnet110", "[0.]+[0.22]*2+[0.35]*18+[0.45]*36", "1.72M -> 0.89M", "252.89M -> 121.09M", "93.50 -> 94.44"),
    ("cifar_vgg16_bn", "[0.21]*7+[0.75]*5", "14.98M -> 2.76M", "313.73M -> 131.17M", "93.96 -> 93.86"),
    ("resnet50", "[0.]+[0.1]*3+[0.35]*16", "25.55M -> 15.09M", "4.11G -> 2.26G", "76.15 -> 76.41"),
    ("resnet50", "[0.]+[0.5]*3+[0.6]*16", "25.55M -> 8.02M", "4.11G -> 0.95G", "76.15 -> 73.30"),
]


def _fmt(n: int) -> str:
    return f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.2f}M"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    data = args.shared / "data" / "cifar10"
    weights = {"cifar_resnet56": next((args.shared / "weights" / "cifar10-resnet").glob("resnet56-*.th"))}
    torch.manual_seed(0)

    rows = []
    header = f"{'model':16}{'sparsity':40}{'params':>20}{'MACs':>24}{'top-1 before->after (no BN re-est.)':>40}{'time':>7}"
    print(header)
    print("-" * len(header))
    for name, sparsity, paper_params, paper_macs, paper_top1 in SETTINGS:
        t0 = time.perf_counter()
        has_weights = name in weights
        model, spec = chipprune.load_model(name, weights.get(name))
        calib = Calibration(data=data, images=640 if has_weights else 64, batch_size=128 if has_weights else 32)
        result = chipprune.prune(
            model, spec, sparsity, calibration=calib, evaluate_on=data if has_weights else False, progress=False
        )
        r = result.report
        row = {
            "model": name,
            "sparsity": sparsity,
            "params": [r.params_before, r.params_after],
            "macs": [r.macs_before, r.macs_after],
            "paper_params": paper_params,
            "paper_macs": paper_macs,
            "paper_top1_after_finetuning": paper_top1,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        top1 = "n/a (no weights)"
        if has_weights:
            row.update(top1=[r.top1_before, r.top1_after], top1_no_bn=r.top1_after_no_bn_recalibration)
            top1 = f"{r.top1_before:.1f} -> {r.top1_after:.1f} ({r.top1_after_no_bn_recalibration:.1f})"
        rows.append(row)
        p = f"{_fmt(r.params_before)} -> {_fmt(r.params_after)}"
        m = f"{_fmt(r.macs_before)} -> {_fmt(r.macs_after)}"
        print(f"{name:16}{sparsity:40}{p:>20}{m:>24}{top1:>40}{row['seconds']:>6.0f}s")
        print(f"{'  paper':16}{'':40}{paper_params:>20}{paper_macs:>24}{paper_top1 + ' (after fine-tuning)':>40}")
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"\nmachine: {machine}")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
