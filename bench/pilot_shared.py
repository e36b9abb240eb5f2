"""The pilot on real CIFAR-10 from ../shared: bundled ResNet-56, default MAC levels, no fine-tuning.

    python bench/pilot_shared.py [--shared ../shared] [--out bench-out/pilot-shared] [--sensitivity]

Prints the pilot table (the same as pilot.md) and the recommendation; with --sensitivity also runs
the one-group-at-a-time sensitivity analysis and prints the suggested plan.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

import chipprune
from chipprune.pilot import run_pilot, sensitivity
from chipprune.reporting.markdown import pilot_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--out", type=Path, default=Path("bench-out/pilot-shared"))
    parser.add_argument("--sensitivity", action="store_true")
    args = parser.parse_args()
    data = args.shared / "data" / "cifar10"
    model, spec = chipprune.load_model("cifar_resnet56", "bundled")
    calibration = chipprune.Calibration(data=data)
    summary = run_pilot(model, spec, data, args.out, calibration=calibration, progress=False)
    print(pilot_markdown(summary))
    if args.sensitivity:
        result = sensitivity(model, spec, data, args.out / "sensitivity", calibration=calibration, progress=False)
        print("suggested plan:", result["suggested_plan"])
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
