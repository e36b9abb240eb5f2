"""How much does glibc's malloc cost CPU runs? Forward passes and the score step, with and without
keeping freed memory in the process.

    python bench/cpu_allocator.py [--shared ../shared] [--rounds 2]

By default glibc hands large freed blocks back to the kernel, and every new activation of a similar
size faults its pages in again (zeroed). Two environment variables make it keep them:
MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_. The same job runs in fresh processes with the
default and with the tuned allocator, alternately, --rounds times:
- the bare forward passes of ResNet-56 (bundled weights) over 640 calibration images, 5 x 128;
- chipprune's whole score step over the same images.
Each figure is the median over rounds; the ratio is default / tuned.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

TUNED = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**34)}


def _child(data: str) -> None:
    """Time the forward passes and the score step once each; print JSON seconds."""
    import torch

    import chipprune
    from chipprune import Calibration, score
    from chipprune.surgery import prunable_groups

    model, spec = chipprune.load_model("cifar_resnet56", "bundled")
    _, groups, _ = prunable_groups(model, spec)
    calib = Calibration(data=data, images=640, batch_size=128)
    loader = calib.loader(spec)
    with torch.inference_mode():
        for x, _ in loader:  # warm-up
            model(x)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x, _ in loader:
            model(x)
    forward = time.perf_counter() - t0
    t0 = time.perf_counter()
    score(model, spec, calib, groups=groups, progress=False)
    print(json.dumps({"forward": forward, "score": time.perf_counter() - t0}))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    data = args.shared / "data" / "cifar10"
    data = str(data) if data.is_dir() else "bundled"
    runs: dict[str, list[dict[str, float]]] = {"default": [], "tuned": []}
    for _ in range(args.rounds):
        for label in runs:
            env = {k: v for k, v in os.environ.items() if k not in TUNED}
            if label == "tuned":
                env.update(TUNED)
            out = subprocess.run([sys.executable, __file__, "--child", data], env=env, check=True, capture_output=True, text=True)
            runs[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"ResNet-56, 640 images from {data}; {platform.machine()}, {os.cpu_count()} CPUs; median of {args.rounds} rounds")
    print(f"tuned: {' '.join(f'{k}={v}' for k, v in TUNED.items())}\n")
    print(f"{'step':34}{'default s':>11}{'tuned s':>9}{'default / tuned':>17}")
    for step in ("forward", "score"):
        d = statistics.median(r[step] for r in runs["default"])
        t = statistics.median(r[step] for r in runs["tuned"])
        print(f"{step + (' passes' if step == 'forward' else ' step'):34}{d:>11.2f}{t:>9.2f}{d / t:>16.2f}x")


if __name__ == "__main__":
    main()
