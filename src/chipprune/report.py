"""Reports of a pruning + fine-tuning run: report.json, a Markdown report.md, and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .files import atomic_write_bytes, write_json
from .summary import change

__all__ = ["write_report", "pyplot"]


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported late: only reports need it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_training(path: Path, history: list[dict[str, Any]]) -> None:
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
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _plot_channels(path: Path, groups: list[dict[str, Any]]) -> None:
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
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_report(out: Path, report: dict[str, Any], record: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """Write report.json, report.md and the plots (training curve, channels per group) into ``out``."""
    out = Path(out)
    plots = []
    if history:
        _plot_training(out / "training_curve.png", history)
        plots.append("training_curve.png")
    if record.get("groups"):
        _plot_channels(out / "channels.png", record["groups"])
        plots.append("channels.png")
    report = {**report, "plots": plots}
    r = report
    lines = [
        f"# chipprune report: {r['model']}",
        "",
        f"Criterion {r.get('criterion', '-')}, sparsity `{r.get('sparsity', '-')}`; "
        f"fine-tuned with recipe `{r['finetune']['recipe']['name']}` for {r['finetune']['recipe']['epochs']} epochs "
        f"on {r['finetune']['train_images']} images ({r['finetune']['processes']} process(es), seed {r['finetune']['seed']}).",
        "",
        "| | before | after | change |",
        "|---|---|---|---|",
        f"| parameters | {r['params_before']:,} | {r['params_after']:,} | {change(r['params_before'], r['params_after'])} |",
        f"| MACs per image | {r['macs_before']:,} | {r['macs_after']:,} | {change(r['macs_before'], r['macs_after'])} |",
    ]
    if r.get("top1_before") is not None:
        lines.append(f"| top-1 (%) | {r['top1_before']:.2f} | {r['top1_after']:.2f} | {r['top1_after'] - r['top1_before']:+.2f} points |")
        lines.append(f"| top-5 (%) | {r['top5_before']:.2f} | {r['top5_after']:.2f} | {r['top5_after'] - r['top5_before']:+.2f} points |")
    else:
        lines.append(f"| top-1 (%) | - | {r['top1_after']:.2f} | |")
    for batch, lat in r.get("latency_ms", {}).items():
        lines.append(f"| latency, batch {batch} (ms, {lat['device']}) | {lat['before']:.2f} | {lat['after']:.2f} | {lat['before'] / lat['after']:.2f}x faster |")
    lines += [
        "",
        f"Test set: {r['test_images']} images, evaluated once at the end. The epoch was chosen on "
        f"{r['finetune']['val_images']} held-out training images (epoch {r['finetune']['selected_epoch']})."
        if r["finetune"]["val_images"]
        else f"Test set: {r['test_images']} images, evaluated once at the end (no validation split: last epoch kept).",
    ]
    if "top1_after_pruning" in r:
        lines.append(f"Right after pruning (BatchNorm re-estimated, no fine-tuning): top-1 {r['top1_after_pruning']:.2f}%.")
    if record.get("groups"):
        lines += ["", "## Channels per group", "", "| group | before | after |", "|---|---|---|"]
        lines += [f"| {g['group']} | {g['channels_before']} | {g['channels_after']} |" for g in record["groups"]]
    if history:
        lines += ["", "## Training", "", "| epoch | train loss | train top-1 | val top-1 | lr |", "|---|---|---|---|---|"]
        for h in history:
            val = f"{h['val_top1']:.2f}" if "val_top1" in h else "-"
            lines.append(f"| {h['epoch']} | {h['train_loss']:.4f} | {h['train_top1']:.2f} | {val} | {h['lr']:.2e} |")
    lines += ["", *[f"![{p}]({p})" for p in plots]]
    write_json(out / "report.json", {k: v for k, v in report.items()})
    atomic_write_bytes(out / "report.md", ("\n".join(lines) + "\n").encode())
