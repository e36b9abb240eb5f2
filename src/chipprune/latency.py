"""Measured inference latency: warm-up, inference mode, many repeats, median and spread.

Uses ``torch.utils.benchmark.Timer`` (warm-up and repeat blocks handled by PyTorch, CUDA synchronised).
"""

from __future__ import annotations

from dataclasses import dataclass

import logging

import torch
import torch.nn as nn

# torch.utils.benchmark imports cpp_extension, which logs a CUDA_HOME notice on CPU-only machines.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

__all__ = ["Latency", "measure_latency"]


@dataclass
class Latency:
    batch_size: int
    median_ms: float
    iqr_ms: float
    runs: int
    device: str


def measure_latency(
    model: nn.Module, image_size: int, batch_size: int, *, device: torch.device | str = "cpu", min_run_time: float = 1.0
) -> Latency:
    """Median wall-clock time of one forward pass of ``batch_size`` images, in milliseconds."""
    model = model.eval().to(device)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)

    def run() -> None:
        with torch.inference_mode():
            model(x)

    for _ in range(3):  # warm-up: allocator, kernel selection, caches
        run()
    timer = benchmark.Timer(stmt="run()", globals={"run": run}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return Latency(batch_size, m.median * 1e3, m.iqr * 1e3, len(m.times) * m.number_per_run, str(device))
