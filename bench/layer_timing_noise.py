"""How much one small layer's timing swings between repeats, by timing method and thread count.

The latency table needs one number per layer shape. This times the same two convolutions (64->64
and 64->32 channels, 3x3, 8x8 input, batch 1) several times each way and prints the range:

- "fastest block": torch.utils.benchmark's fastest block of one timing (the table's old method);
- "against reference": the layer and a reference convolution in 5 alternating rounds of 5 ms
  blocks, median ratio (the table's method now; a ratio, so compare spreads, not values).

    python bench/layer_timing_noise.py --repeats 8
"""

from __future__ import annotations

import argparse
import time

import torch

from chipprune.evaluation.latency import compare_latency
from chipprune.planning.latency_table import _REFERENCE, LayerShape, layer_runner, time_layer

SHAPES = {
    "64->64": LayerShape("conv2d", 64, 64, (8, 8), (3, 3, 1, 1, 1, 1, 1, 1, 1, 0)),
    "64->32": LayerShape("conv2d", 64, 32, (8, 8), (3, 3, 1, 1, 1, 1, 1, 1, 1, 0)),
}


def fastest_block(shape: LayerShape) -> float:
    return time_layer(shape, 1, "cpu", 0.05)


def against_reference(shape: LayerShape) -> float:
    return compare_latency(layer_runner(shape, 1, "cpu"), layer_runner(_REFERENCE, 1, "cpu"), 1, block_seconds=0.005,
                           min_rounds=5, max_seconds=0.0).speedup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    print(f"{'threads':>8}  {'method':18}" + "".join(f"{name + ' range':>24}{'max/min':>9}" for name in SHAPES) + f"{'s/timing':>10}")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for label, method in (("fastest block", fastest_block), ("against reference", against_reference)):
            started, cells = time.perf_counter(), ""
            for shape in SHAPES.values():
                values = [method(shape) for _ in range(args.repeats)]
                cells += f"{f'{min(values):.4f}-{max(values):.4f}':>24}{max(values) / min(values):>8.2f}x"
            seconds = (time.perf_counter() - started) / (args.repeats * len(SHAPES))
            print(f"{threads:>8}  {label:18}{cells}{seconds:>10.2f}", flush=True)
    print("\n(fastest block: milliseconds; against reference: ratio to the reference convolution)")


if __name__ == "__main__":
    main()
