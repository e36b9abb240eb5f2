"""PNG plots: the training curve, channels kept per group, a pilot's accuracy and latency against
compute, and a sensitivity chart."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..results import PilotReport

__all__ = ["pyplot", "plot_training", "plot_channels", "plot_pilot", "plot_sensitivity", "plot_sweep"]


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported late: only reports need it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)


def plot_training(path: Path, history: list[dict[str, Any]]) -> None:
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [h["train_top1"] for h in history], label="train top-1", marker="o")
    if any("val_top1" in h for h in history):
        ax.plot(epochs, [h.get("val_top1") for h in history], label="validation top-1", marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h["train_loss"] for h in history], color="grey", linestyle="--", label="train loss")
    ax2.set_ylabel("loss")
    ax.xaxis.get_major_locator().set_params(integer=True)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right", fontsize=8)
    ax.set_title("fine-tuning")
    fig.tight_layout()
    _save(fig, path)


def plot_channels(path: Path, groups: list[dict[str, Any]]) -> None:
    plt = pyplot()
    names = [g["group"] for g in groups]
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(names)), 3.8))
    x = range(len(names))
    ax.bar(x, [g["channels_before"] for g in groups], color="#cccccc", label="before")
    ax.bar(x, [g["channels_after"] for g in groups], color="#3b75af", label="kept")
    ax.set_xticks(list(x), names, rotation=90, fontsize=7)
    ax.set_ylabel("channels")
    ax.set_title("channels kept per pruned group")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_pilot(path: Path, pilot: PilotReport) -> None:
    """Top-1 with its interval and batch-1 latency against MACs, for the original and every level."""
    plt = pyplot()
    b = pilot.baseline
    points = sorted(
        [(lv.macs / 1e6, lv.top1, lv.top1 - lv.top1_low, lv.top1_high - lv.top1, lv.latency.after_ms) for lv in pilot.levels]
        + [(b.macs / 1e6, b.top1, b.top1 - b.top1_interval[0], b.top1_interval[1] - b.top1, b.latency_ms)]
    )
    macs, top1, low, high, latency = (list(v) for v in zip(*points))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.errorbar(macs, top1, yerr=[low, high], fmt="o-", capsize=4, label="top-1 (Wilson interval)")
    ax.annotate("original", (b.macs / 1e6, b.top1), textcoords="offset points", xytext=(-20, 8), fontsize=8)
    ax.set_xlabel("MACs per image (millions)")
    ax.set_ylabel("test top-1 (%)")
    ax2 = ax.twinx()
    ax2.plot(macs, latency, "s--", color="tab:orange", label="latency, batch 1 (median)")
    ax2.set_ylabel("latency at batch 1 (ms)")
    ax.set_title("pilot: accuracy and latency vs compute")
    fig.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_sweep(path: Path, points: Sequence[tuple[int, float]], model: str) -> None:
    """A sweep's metric against MACs (``points``: (MACs, metric), the original among them)."""
    plt = pyplot()
    macs, metric = zip(*sorted(points))
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot([m / 1e6 for m in macs], metric, "o-")
    ax.annotate("original", (macs[-1] / 1e6, metric[-1]), textcoords="offset points", xytext=(-30, 8), fontsize=8)
    ax.set_xlabel("MACs per input (millions)")
    ax.set_ylabel("your metric")
    ax.set_title(f"{model}: metric vs compute")
    fig.tight_layout()
    _save(fig, path)


def plot_sensitivity(path: Path, drops: dict[str, dict[str, float]], ratios: Sequence[float]) -> None:
    plt = pyplot()
    names = list(drops)
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(names)), 3.8))
    width = 0.8 / len(ratios)
    for i, r in enumerate(ratios):
        ax.bar([j + i * width for j in range(len(names))], [drops[n][f"{r:g}"] for n in names], width, label=f"ratio {r:g}")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=90, fontsize=7)
    ax.set_ylabel("top-1 drop (points)")
    ax.set_title("sensitivity: one group pruned at a time (no fine-tuning)")
    ax.legend(fontsize=8)
    _save(fig, path)
