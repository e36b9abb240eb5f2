"""The pilot's statistics (normal approximations, documented in docs/PILOT.md).

  accuracy interval: Wilson score interval for correct/n;
  drop interval: mean of the paired differences d_i = base_i - pruned_i in {-1, 0, 1}, +- z * sd(d)/sqrt(n).
Recommendation: the smallest model (fewest MACs) whose upper bound of the drop is within the limit.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from ..errors import ChipPruneError
from ..results import PilotLevel

__all__ = ["wilson_interval", "paired_drop_interval", "recommend"]


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion, in percent."""
    if n == 0:
        return (float("nan"), float("nan"))
    z, p = _z(confidence), correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (100 * (centre - half), 100 * (centre + half))


def paired_drop_interval(base: torch.Tensor, pruned: torch.Tensor, confidence: float = 0.95) -> tuple[float, float, float]:
    """Accuracy drop (base - pruned, points) and its interval from per-image correctness on the same images."""
    if base.shape != pruned.shape or base.numel() == 0:
        raise ChipPruneError("paired comparison needs the same, non-empty test images for both models")
    d = base.double() - pruned.double()
    n = d.numel()
    mean = float(d.mean())
    sd = float(d.std(unbiased=True)) if n > 1 else 0.0
    half = _z(confidence) * sd / math.sqrt(n)
    return 100 * mean, 100 * (mean - half), 100 * (mean + half)


def recommend(levels: list[PilotLevel], max_drop: float) -> PilotLevel | None:
    """The level with the fewest MACs whose drop, at its upper confidence bound, is within ``max_drop``."""
    safe = [lv for lv in levels if lv.drop_high <= max_drop]
    return min(safe, key=lambda lv: lv.macs) if safe else None
