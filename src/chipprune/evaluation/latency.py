"""Measured inference latency: warm-up, inference mode, many repeats, median and spread.

Uses ``torch.utils.benchmark.Timer`` (warm-up and repeat blocks handled by PyTorch, CUDA synchronised).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import logging
import statistics

import numpy as np
import torch
import torch.nn as nn

from ..errors import ChipPruneError

# torch.utils.benchmark imports cpp_extension, which logs a CUDA_HOME notice on CPU-only machines.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

__all__ = ["Latency", "Comparison", "time_call", "measure_latency", "measure_onnx_latency", "compare_latency", "compare_models"]


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


def measure_latency(
    model: nn.Module, image_size: int, batch_size: int, *, device: torch.device | str = "cpu", min_run_time: float = 1.0
) -> Latency:
    """Median wall-clock time of one forward pass of ``batch_size`` images, in milliseconds."""
    model = model.eval().to(device)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)

    def run() -> None:
        with torch.inference_mode():
            model(x)

    return time_call(run, batch_size, str(device), min_run_time=min_run_time)


def measure_onnx_latency(
    path: str, image_size: int, batch_size: int, *, device: torch.device | str = "cpu", min_run_time: float = 1.0
) -> Latency:
    """The same measurement for an ONNX file run by ONNX Runtime (CUDA provider on a CUDA device when
    installed, else CPU with as many threads as torch uses)."""
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
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((batch_size, 3, image_size, image_size), dtype=np.float32)}
    label = f"onnxruntime {providers[0].removesuffix('ExecutionProvider')}"
    return time_call(lambda: session.run(None, feed), batch_size, label, min_run_time=min_run_time)


@dataclass
class Comparison:
    """Original against pruned on one device and batch size, timed in alternating rounds: the
    median time of each, and the median over rounds of the per-round speed-up with its range.
    Every latency chipprune reports is one of these."""

    before_ms: float
    after_ms: float
    speedup: float
    speedup_low: float  # the slowest and fastest round's speed-up: how much the machine's load moved
    speedup_high: float
    rounds: int = 0
    device: str = ""

    @property
    def unsteady(self) -> bool:
        """The rounds disagree by more than 25%: the load on the machine changed while timing."""
        return self.speedup_high > 1.25 * self.speedup_low


def compare_latency(
    measure: Callable[..., Latency], original: object, pruned: object, image_size: int, batch_size: int, *,
    device: torch.device | str = "cpu", rounds: int = 3, min_run_time: float = 0.4,
) -> Comparison:
    """Time ``original`` and ``pruned`` (models with ``measure_latency``, or ONNX files with
    ``measure_onnx_latency``) in alternating rounds, so that a change in the machine's load hits
    both alike; the speed-up is the median over rounds of the per-round ratio."""
    before, after, ratios = [], [], []
    for r in range(rounds):
        pair = [(original, before), (pruned, after)]
        for form, times in pair if r % 2 == 0 else pair[::-1]:
            times.append(measure(form, image_size, batch_size, device=device, min_run_time=min_run_time).median_ms)
        ratios.append(before[-1] / after[-1])
    return Comparison(statistics.median(before), statistics.median(after), statistics.median(ratios), min(ratios), max(ratios),
                      rounds, str(device))


def compare_models(
    original: nn.Module, pruned: nn.Module, image_size: int, batch_sizes: Iterable[int], *, device: torch.device | str = "cpu",
) -> dict[str, Comparison]:
    """``compare_latency`` of two models in eager PyTorch at each batch size, keyed by batch size."""
    return {str(b): compare_latency(measure_latency, original, pruned, image_size, int(b), device=device) for b in batch_sizes}
