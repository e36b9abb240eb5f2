"""Channel independence of maps with more channels than pixels: through the pixels' Gram matrix
(chipprune since 2026-12-01) against the thin SVD of each map (before), one CPU thread, interleaved
rounds, both checked against each other.

    python bench/tall_maps.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import chipprune.scoring.independence as independence
from chipprune.scoring import placement


def _svd_spectrum(a: torch.Tensor):
    u, s = placement.svd(a)
    return s.square(), u, a.square().sum(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    gram_path = independence._tall_spectrum
    print(f"machine: {platform.machine()}, 1 thread, torch {torch.__version__}")
    print(f"{'maps (N, C, H, W)':24}{'SVD s':>9}{'Gram s':>9}{'ratio':>8}  [range]   max rel diff")
    for shape in ((32, 1024, 14, 14), (32, 2048, 7, 7), (32, 512, 7, 7)):
        x = torch.relu(torch.randn(*shape))
        times = {"svd": [], "gram": []}
        for r in range(args.rounds):
            for name in (("svd", "gram") if r % 2 == 0 else ("gram", "svd")):
                independence._tall_spectrum = _svd_spectrum if name == "svd" else gram_path
                started = time.perf_counter()
                result = independence.channel_independence(x)
                times[name].append(time.perf_counter() - started)
                if name == "svd":
                    by_svd = result
                else:
                    by_gram = result
        independence._tall_spectrum = gram_path
        ratios = sorted(a / b for a, b in zip(times["svd"], times["gram"]))
        diff = float((by_gram - by_svd).abs().max() / by_svd.abs().max())
        print(f"{str(shape):24}{statistics.median(times['svd']):9.2f}{statistics.median(times['gram']):9.2f}"
              f"{statistics.median(ratios):7.2f}x  [{ratios[0]:.2f}-{ratios[-1]:.2f}]  {diff:.1e}")


if __name__ == "__main__":
    main()
