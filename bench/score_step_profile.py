"""The ResNet-50 score step on 64 images, timed twice (the first run holds the placement probe, unless
its table is cached) and profiled the second time: where the step's time goes.

    python bench/score_step_profile.py [--device cuda]

This is the script behind docs/gpu/score_step_h200.txt (run there by hand as bench/_q.py, same code).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

import chipprune
from chipprune import Calibration, score
from chipprune.surgery import prunable_groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    model, spec = chipprune.load_model("resnet50", "none")
    model = model.eval().to(args.device)
    _, groups, _ = prunable_groups(model, spec)

    def run() -> float:
        calib = Calibration(data="bundled", images=args.images, batch_size=64)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        score(model, spec, calib, groups=groups, device=args.device, progress=False)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    print(f"{args.images} images, auto: {run():.2f} s", flush=True)
    profile = cProfile.Profile()
    profile.enable()
    seconds = run()
    profile.disable()
    print(f"{args.images} images, auto again: {seconds:.2f} s", flush=True)
    pstats.Stats(profile).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()
