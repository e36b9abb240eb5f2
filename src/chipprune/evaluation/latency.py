"""Measured inference latency, one way for everything chipprune reports: the original and the
pruned model timed in alternating rounds in one process, after warm-up, until the speed-up is known
to a stated precision (or a time cap), summarised as the median speed-up with a confidence interval.

Every timing goes through ``time_call`` (``torch.utils.benchmark.Timer``: blocks of repeats, CUDA
synchronised): the one seam a test replaces with a deterministic clock.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.utils._pytree as pytree

from tqdm.auto import tqdm

from ..errors import ChipPruneError
from ..models.spec import ModelSpec

# torch.utils.benchmark imports cpp_extension, which logs a CUDA_HOME notice on CPU-only machines.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

__all__ = [
    "Latency", "Comparison", "time_call", "model_runner", "onnx_runner", "measure_latency", "median_interval", "compare_latency",
    "compare_models", "random_input",
]


@dataclass
class Latency:
    batch_size: int
    median_ms: float
    iqr_ms: float
    runs: int
    device: str
    min_ms: float = float("nan")  # the fastest block: the machine's speed when nothing else disturbs it


def time_call(run: Callable[[], object], batch_size: int, device: str, *, min_run_time: float, warmup: int = 3) -> Latency:
    """Time ``run`` (one forward pass of ``batch_size`` inputs): ``warmup`` calls (allocator, kernel
    choice, caches), then torch.utils.benchmark's blocked repeats with torch's thread count."""
    for _ in range(warmup):
        run()
    timer = benchmark.Timer(stmt="run()", globals={"run": run}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return Latency(batch_size, m.median * 1e3, m.iqr * 1e3, len(m.times) * m.number_per_run, device, min(m.times) * 1e3)


def random_input(shape: int | ModelSpec, batch_size: int, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None) -> Any:
    """A random batch of ``batch_size`` images of ``shape`` (an image size, or a spec: as its model takes
    them), drawn on the CPU from ``generator`` (default: torch's). A spec with an ``example`` input
    gives that input: its own batch size, and its values."""
    if isinstance(shape, int):
        return torch.randn(batch_size, 3, shape, shape, generator=generator).to(device)
    if shape.example is not None:
        return shape.example_input(device)
    return shape.model_input(torch.rand(batch_size, 3, shape.image_size, shape.image_size, generator=generator).to(device))


def model_runner(model: nn.Module, shape: int | ModelSpec, batch_size: int, device: torch.device | str = "cpu") -> Callable[[], None]:
    """One forward pass of a fixed random batch (``random_input``) through ``model`` in inference mode, ready to time."""
    model = model.eval().to(device)
    x = random_input(shape, batch_size, device)

    def run() -> None:
        with torch.inference_mode():
            model(x)

    return run


def onnx_runner(path: str | Path, shape: int | ModelSpec, batch_size: int, device: torch.device | str = "cpu") -> Callable[[], None]:
    """One ONNX Runtime call on a fixed random batch (CUDA provider on a CUDA device when installed,
    else the CPU with as many threads as torch uses), ready to time."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ChipPruneError("ONNX Runtime latency needs the 'export' extra: pip install 'chipprune[export]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), options, providers=providers)
    leaves = [t.numpy() for t in pytree.tree_leaves(random_input(shape, batch_size, generator=torch.Generator().manual_seed(0)))]
    feed = {i.name: x for i, x in zip(session.get_inputs(), leaves)}
    return lambda: session.run(None, feed)


def measure_latency(
    model: nn.Module, image_size: int, batch_size: int, *, device: torch.device | str = "cpu", min_run_time: float = 1.0
) -> Latency:
    """Wall-clock time of one forward pass of ``batch_size`` images (median and fastest block), in ms."""
    return time_call(model_runner(model, image_size, batch_size, device), batch_size, str(device), min_run_time=min_run_time)


@dataclass
class Comparison:
    """Original against pruned on one device and batch size, timed in rounds that alternate the two.

    ``speedup`` is the median over rounds of the round's speed-up (original time / pruned time), and
    ``speedup_low``-``speedup_high`` its confidence interval at ``confidence`` (order statistics: no
    assumption about how the machine's noise is distributed). ``precise``: the interval came within
    the asked precision before the time cap. Every latency chipprune reports is one of these.
    """

    before_ms: float  # median over rounds
    after_ms: float
    speedup: float
    speedup_low: float
    speedup_high: float
    rounds: int = 0
    device: str = ""
    confidence: float = 0.95
    precise: bool = True

    @property
    def faster(self) -> bool:
        """The pruned model is faster, beyond doubt at the stated confidence."""
        return self.speedup_low > 1.0

    @property
    def slower(self) -> bool:
        return self.speedup_high < 1.0


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median: order statistics k and n + 1 - k, with
    the largest k whose binomial tail leaves at most (1 - confidence) / 2 on each side (the whole
    range when there are too few values for that)."""
    ordered, n = sorted(values), len(values)
    tail, k = 0.0, 0
    while k < n // 2:
        tail += math.comb(n, k) / 2**n  # P(fewer than k + 1 values below the median)
        if tail > (1 - confidence) / 2:
            break
        k += 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]


def compare_latency(
    original: Callable[[], object],
    pruned: Callable[[], object],
    batch_size: int,
    *,
    device: torch.device | str = "cpu",
    precision: float = 0.05,
    max_seconds: float = 30.0,
    min_rounds: int = 6,
    block_seconds: float = 0.1,
    confidence: float = 0.95,
    progress: bool = False,
    desc: str = "timing",
) -> Comparison:
    """Time two runners (``model_runner``, ``onnx_runner``) in alternating rounds after warm-up: each
    round times a block of each, the order flipping every round, so a change in the machine's load
    hits both alike. Rounds go on until the speed-up's interval lies within +-``precision`` of its
    median (at least ``min_rounds``), or ``max_seconds`` have passed."""
    for run in (original, pruned):
        time_call(run, batch_size, str(device), min_run_time=block_seconds)  # warm-up
    before: list[float] = []
    after: list[float] = []
    ratios: list[float] = []
    started = time.monotonic()
    bar = tqdm(desc=desc, unit="round", disable=not progress, leave=False)
    while True:
        pair = [(original, before), (pruned, after)]
        for run, times in pair if len(ratios) % 2 == 0 else pair[::-1]:
            times.append(time_call(run, batch_size, str(device), min_run_time=block_seconds, warmup=0).median_ms)
        ratios.append(before[-1] / after[-1])
        bar.update()
        if len(ratios) < min_rounds:
            continue
        low, high = median_interval(ratios, confidence)
        mid = statistics.median(ratios)
        precise = high <= mid * (1 + precision) and low >= mid * (1 - precision)
        if precise or time.monotonic() - started >= max_seconds:
            break
    bar.close()
    return Comparison(statistics.median(before), statistics.median(after), mid, low, high, len(ratios), str(device), confidence,
                      precise)


def compare_models(
    original: nn.Module, pruned: nn.Module, image_size: int | ModelSpec, batch_sizes: Iterable[int | str], *,
    device: torch.device | str = "cpu", progress: bool = False,
) -> dict[str, Comparison]:
    """``compare_latency`` of two models in eager PyTorch at each batch size, keyed by batch size."""
    return {
        str(b): compare_latency(model_runner(original, image_size, int(b), device), model_runner(pruned, image_size, int(b), device),
                                int(b), device=device, progress=progress, desc=f"timing batch {b}")
        for b in batch_sizes
    }
