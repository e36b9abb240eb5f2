"""Accuracy per fine-tuning budget on ResNet-56 pruned at the paper's setting: CHIP and L1, with and
without distillation from the unpruned model, at a short and a few-shot budget.

    python bench/finetune_compare.py [--shared ../shared] [--out docs/finetune_compare.json]
    python bench/finetune_compare.py --rows chip:2:20000 chip+kd:2:20000      # criterion[+kd]:epochs:images

Everything as chipprune does it: bundled ResNet-56 weights; criterion scores (CHIP on 640 augmented
training images of ../shared CIFAR-10); pruning at [0.]+[0.15]*2+[0.4]*27; BatchNorm re-estimation;
then the chip-cifar recipe shortened to the row's epochs on its training images (no warm-up, cosine
over the short run), the epoch chosen on 10% as many held-out training images, and the 1,000
lossless test images evaluated once. Same seed, images and order for every row. "+kd": the loss is
half cross-entropy, half the KL divergence from the unpruned model at temperature 4 (the recipe's
distill_weight 0.5). Each row's test accuracy is compared with the first row of its budget on the
same test images: a paired difference with its 95% interval.
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
from chipprune.evaluation.metrics import correct_flags
from chipprune.pilot.stats import paired_drop_interval
from chipprune.runtime import Dist
from chipprune.training import TrainConfig, fit, recipe_with

SPARSITY = "[0.]+[0.15]*2+[0.4]*27"
ROWS = ["chip:2:20000", "chip+kd:2:20000", "l1+kd:2:20000", "chip:1:5000", "chip+kd:1:5000"]


def run_row(name: str, data: Path, source, workdir: Path) -> dict:
    criterion_kd, epochs, images = name.split(":")
    criterion, kd = criterion_kd.removesuffix("+kd"), criterion_kd.endswith("+kd")
    t0 = time.perf_counter()
    model, spec = chipprune.load_model("cifar_resnet56", "bundled")
    teacher = chipprune.load_model("cifar_resnet56", "bundled")[0] if kd else None
    result = chipprune.prune(model, spec, SPARSITY, criterion=criterion, calibration=chipprune.Calibration(data=data), progress=False)
    recipe = recipe_with("chip-cifar", epochs=int(epochs), warmup_epochs=0, distill_weight=0.5 if kd else 0.0)
    config = TrainConfig(recipe, workdir / name.replace(":", "-").replace("+", "_"), seed=0, limit_train_images=int(images),
                         progress=False, overwrite=True)
    summary = fit(result.model, spec, source, config, Dist(), teacher)
    flags = correct_flags(result.model, source.test_loader(spec))
    return {"row": name, "criterion": criterion, "distill": kd, "epochs": int(epochs), "train_images": int(images),
            "top1_pruned": result.report.top1_after, "top1_finetuned": summary.test_top1, "selected_epoch": summary.selected_epoch,
            "minutes": round((time.perf_counter() - t0) / 60, 1), "flags": flags.int().tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--rows", nargs="+", default=ROWS)
    parser.add_argument("--workdir", type=Path, default=Path("bench-out/finetune_compare"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data = args.shared / "data" / "cifar10"
    source = open_data(data)
    rows = []
    for name in args.rows:
        rows.append(run_row(name, data, source, args.workdir))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "flags"}), flush=True)
    print(f"\nResNet-56 at {SPARSITY}: 92.6% unpruned on the 1,000 test images")
    print(f"{'row':18}{'pruned':>8}{'fine-tuned':>12}  {'vs first row of its budget (paired, 95%)':42}{'minutes':>8}")
    firsts: dict[tuple[int, int], dict] = {}
    for row in rows:
        budget = (row["epochs"], row["train_images"])
        first = firsts.setdefault(budget, row)
        if first is row:
            versus = "(reference)"
        else:
            drop, low, high = paired_drop_interval(torch.tensor(first["flags"]), torch.tensor(row["flags"]))
            row["gain_vs_first"] = {"points": -drop, "low": -high, "high": -low}
            versus = f"{-drop:+.1f} points [{-high:+.1f}, {-low:+.1f}]"
        print(f"{row['row']:18}{row['top1_pruned']:>8.1f}{row['top1_finetuned']:>12.1f}  {versus:42}{row['minutes']:>8.1f}")
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"machine: {machine}")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
