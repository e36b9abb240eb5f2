"""Markdown reports a person reads: report.md of a fine-tuning run (with report.json and plots),
and pilot.md of a pilot sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..evaluation.latency import Comparison
from ..io.atomic import atomic_write_bytes, write_json
from ..results import FinetuneReport, PilotReport, PruneReport
from .console import change, prune_summary, speedup_text
from .plots import plot_channels, plot_training

__all__ = ["write_report", "write_prune_report", "finetune_markdown", "pilot_markdown"]


def write_report(out: Path, report: FinetuneReport, record: dict[str, Any]) -> None:
    """Write report.json, report.md and the plots (training curve, channels per group) into ``out``;
    report.json carries the weights' digest from ``record``, which ties it to them."""
    out = Path(out)
    report.plots = []
    if report.finetune.history:
        plot_training(out / "training_curve.png", report.finetune.history)
        report.plots.append("training_curve.png")
    if record.get("groups"):
        plot_channels(out / "channels.png", record["groups"])
        report.plots.append("channels.png")
    write_json(out / "report.json", {**report.to_json(), "weights_sha256": record.get("weights_sha256")})
    atomic_write_bytes(out / "report.md", finetune_markdown(report, record).encode())


def write_prune_report(out: Path, report: PruneReport, record: dict[str, Any]) -> None:
    """report.md and channels.png of a pruning run (report.json is written with the weights)."""
    out = Path(out)
    image = ""
    if record.get("groups"):
        plot_channels(out / "channels.png", record["groups"])
        image = "\n![channels kept per group](channels.png)\n"
    text = f"# chipprune pruning report: {report.model}\n\n```\n{prune_summary(report, record, None, True)}\n```\n{image}"
    atomic_write_bytes(out / "report.md", text.encode())


def finetune_markdown(r: FinetuneReport, record: dict[str, Any]) -> str:
    """report.md of a fine-tuning (or training) run."""
    f = r.finetune
    lines = [
        f"# chipprune report: {r.model}",
        "",
        f"Criterion {r.criterion or '-'}, sparsity `{r.sparsity or '-'}`; fine-tuned with recipe `{f.recipe['name']}` for "
        f"{f.recipe['epochs']} epochs on {f.train_images} images ({f.processes} process(es), seed {f.seed}).",
        "",
        "| | before | after | change |",
        "|---|---|---|---|",
        f"| parameters | {r.params_before:,} | {r.params_after:,} | {change(r.params_before, r.params_after)} |",
        f"| MACs per image | {r.macs_before:,} | {r.macs_after:,} | {change(r.macs_before, r.macs_after)} |",
    ]
    if r.top1_before is not None:
        lines.append(f"| top-1 (%) | {r.top1_before:.2f} | {r.top1_after:.2f} | {r.top1_after - r.top1_before:+.2f} points |")
        lines.append(f"| top-5 (%) | {r.top5_before:.2f} | {r.top5_after:.2f} | {r.top5_after - r.top5_before:+.2f} points |")
    else:
        lines.append(f"| top-1 (%) | - | {r.top1_after:.2f} | |")
    for batch, c in r.latency_ms.items():
        lines.append(f"| latency, batch {batch} (ms, {c.device}, median) | {c.before_ms:.2f} | {c.after_ms:.2f} | {speedup_text(c)} |")
    lines += [
        "",
        f"Test set: {r.test_images} images, evaluated once at the end. The epoch was chosen on "
        f"{f.val_images} held-out training images (epoch {f.selected_epoch})."
        if f.val_images
        else f"Test set: {r.test_images} images, evaluated once at the end (no validation split: last epoch kept).",
    ]
    if r.top1_after_pruning is not None:
        lines.append(f"Right after pruning (BatchNorm re-estimated, no fine-tuning): top-1 {r.top1_after_pruning:.2f}%.")
    if record.get("groups"):
        lines += ["", "## Channels per group", "", "| group | before | after |", "|---|---|---|"]
        lines += [f"| {g['group']} | {g['channels_before']} | {g['channels_after']} |" for g in record["groups"]]
    if f.history:
        lines += ["", "## Training", "", "| epoch | train loss | train top-1 | val top-1 | lr |", "|---|---|---|---|---|"]
        for h in f.history:
            val = f"{h['val_top1']:.2f}" if "val_top1" in h else "-"
            lines.append(f"| {h['epoch']} | {h['train_loss']:.4f} | {h['train_top1']:.2f} | {val} | {h['lr']:.2e} |")
    lines += ["", *[f"![{p}]({p})" for p in r.plots]]
    return "\n".join(lines) + "\n"


def _speedup_cell(c: Comparison) -> str:
    mark = "" if c.faster or c.slower else " ~"
    return f"{c.speedup:.2f}x ({c.speedup_low:.2f}-{c.speedup_high:.2f}){mark}"


def pilot_markdown(pilot: PilotReport) -> str:
    """A one-page report a manager can read."""
    b, conf, tb = pilot.baseline, pilot.confidence, pilot.baseline.throughput_batch
    lines = [
        f"# Pilot: how far can {pilot.model} be compressed?",
        "",
        f"Data: {pilot.data}; {b.test_images} test images. Channels ranked by {pilot.criterion.upper()}. "
        f"Intervals at {conf:.0%} confidence. Latency: medians of rounds that alternate each level with the original "
        "(speed-up with its 95% interval; '~' marks an interval that contains 1.0: no measurable difference).",
        "",
        f"| MACs (target) | params | MACs | latency b=1 | speed-up | latency b={tb} | speed-up | top-1 (%) | interval | drop (points) | drop up to |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| original | {b.params:,} | {b.macs:,} | {b.latency_ms:.2f} ms | 1.00x | {b.throughput_ms:.1f} ms | 1.00x | "
        f"{b.top1:.2f} | {b.top1_interval[0]:.1f}-{b.top1_interval[1]:.1f} | | |",
    ]
    for lv in pilot.levels:
        lines.append(
            f"| {lv.target:.0%} | {lv.params:,} | {lv.macs:,} | {lv.latency.after_ms:.2f} ms | {_speedup_cell(lv.latency)} | "
            f"{lv.throughput.after_ms:.1f} ms | {_speedup_cell(lv.throughput)} | {lv.top1:.2f} | {lv.top1_low:.1f}-{lv.top1_high:.1f} | "
            f"{lv.drop:+.2f} | {lv.drop_high:+.2f} |"
        )
    rec = pilot.recommended
    ft = pilot.levels[0].finetune_epochs if pilot.levels else 0
    how = f"after {ft} epoch(s) of fine-tuning" if ft else "without fine-tuning (BatchNorm statistics re-estimated only)"
    lines += ["", "![accuracy and latency vs MACs](pilot.png)", "", "## Recommendation", ""]
    if rec:
        lines.append(
            f"Prune to **{rec.target:.0%} of the MACs** ({rec.macs:,} MACs, {rec.params:,} parameters): "
            f"the smallest level whose accuracy drop stays within {pilot.max_drop} point(s) at {conf:.0%} "
            f"confidence (measured drop {rec.drop:+.2f}, at most {rec.drop_high:+.2f}), {how}. "
            f"On this machine (eager PyTorch) it runs {speedup_text(rec.latency)} at batch 1 and "
            f"{speedup_text(rec.throughput)} at batch {tb}."
        )
    else:
        lines.append(
            f"No level keeps the drop within {pilot.max_drop} point(s) at {conf:.0%} confidence {how}. "
            "Fine-tune (--finetune-epochs), try milder levels, or use more test images to narrow the intervals."
        )
    lines += [
        "",
        "How to read this: the drop is measured on the same test images as the original (a paired comparison), "
        "so its interval is much narrower than the accuracy intervals. More test images narrow both. "
        "A pilot on a sample predicts, it does not guarantee: confirm the chosen level on the full data.",
    ]
    return "\n".join(lines) + "\n"
