"""Human-readable summaries printed by the CLI (the JSON reports hold the same numbers)."""

from __future__ import annotations

from typing import Any

from ..evaluation.latency import Comparison
from ..planning.plan import Plan
from ..results import PruneReport
from ..scoring.streaming import UNSTABLE_BELOW, GroupScores
from ..surgery.groups import ChannelGroup

__all__ = ["change", "speedup_text", "prune_summary", "score_summary", "stability_warnings", "plan_summary"]


def change(before: float, after: float) -> str:
    """Relative change as text, e.g. '-43.1%' ('' when ``before`` is 0)."""
    return f"{100.0 * (after - before) / before:+.1f}%" if before else ""


def speedup_text(c: Comparison) -> str:
    """The speed-up in words: '1.57x faster (95% interval 1.50-1.62x, 6 rounds)'; a speed-up whose
    interval contains 1.0 is called no measurable difference, and rounds that never agreed are said."""
    interval = f"{c.confidence:.0%} interval {c.speedup_low:.2f}-{c.speedup_high:.2f}x, {c.rounds} rounds"
    if c.faster:
        text = f"{c.speedup:.2f}x faster ({interval})"
    elif c.slower:
        text = f"{c.speedup:.2f}x, slower ({interval})"
    else:
        text = f"{c.speedup:.2f}x: no measurable difference ({interval}, which contains 1.0)"
    if not c.precise:
        text += "; the rounds kept disagreeing (the machine's load moved): rerun on an idle machine for a firmer figure"
    return text


def _rho(value: float | None) -> str:
    # None (read back from JSON) or NaN: not computed, e.g. for the l1 and random criteria.
    return "-" if value is None or value != value else f"{value:.3f}"


def prune_summary(report: PruneReport, record: dict[str, Any], folder: str | None, verbose: bool) -> str:
    """A one-screen summary of a pruning run; with ``verbose`` a per-group table of channels kept."""
    r = report
    images = f"{r.calibration_images} calibration images"
    if r.calibration_images == 0 and r.criterion in ("l1", "random"):
        images = f"criterion '{r.criterion}' uses no calibration images"
    lines = [
        f"chipprune: {r.model} pruned with {r.criterion.upper()} at sparsity {r.sparsity}",
        f"data: {r.data}; {images}",
        "",
        f"{'':14}{'before':>14}{'after':>14}{'change':>10}",
        f"{'params':14}{r.params_before:>14,}{r.params_after:>14,}{change(r.params_before, r.params_after):>10}",
        f"{'MACs':14}{r.macs_before:>14,}{r.macs_after:>14,}{change(r.macs_before, r.macs_after):>10}",
    ]
    if r.evaluated:
        for name, before, after in (("top1", r.top1_before, r.top1_after), ("top5", r.top5_before, r.top5_after)):
            lines.append(f"{name + ' (%)':14}{before:>14.2f}{after:>14.2f}{after - before:>+9.2f}p")
        if r.bn_recalibrated:
            lines.append(
                f"  'after' is before any fine-tuning, with BatchNorm statistics re-estimated on "
                f"{r.bn_recalibration_images} calibration images (without that: top-1 {r.top1_after_no_bn_recalibration:.2f}%)."
            )
        lines.append(f"  test set: {r.test_images} images.")
    if r.metric_before is not None and r.metric_after is not None:
        lines.append(f"{'metric':14}{r.metric_before:>14.4g}{r.metric_after:>14.4g}{r.metric_after - r.metric_before:>+10.4g}"
                     "  (your evaluate function; 'after' with BatchNorm re-estimated, before fine-tuning)")
    if r.not_measured:
        lines.append(f"accuracy: not measured ({r.not_measured})")
    for batch, c in r.latency_ms.items():
        predicted = f"; predicted {r.predicted_speedup[batch]:.2f}x" if batch in r.predicted_speedup else ""
        lines.append(f"{'ms, batch ' + batch:14}{c.before_ms:>14.2f}{c.after_ms:>14.2f}{change(c.before_ms, c.after_ms):>10}"
                     f"  {speedup_text(c)} on {c.device}{predicted}")
    lines += [f"note: {note}" for note in record.get("notes", [])]
    lines.extend(stability_warnings({g["group"]: g.get("split_half_spearman") for g in record["groups"]}))
    if verbose:
        lines += ["", f"{'group':28}{'members':>8}{'removed':>9}{'channels':>14}{'split-half rho':>16}"]
        for g in record["groups"]:
            lines.append(
                f"{g['group']:28}{len(g['members']):>8}{g['ratio']:>9.2f}"
                f"{str(g['channels_before']) + ' -> ' + str(g['channels_after']):>14}{_rho(g.get('split_half_spearman')):>16}"
            )
    timings = ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f} s" for k, v in r.timings.items())
    lines += ["", f"time: {timings}"]
    if folder:
        lines.append(f"saved: {folder}/ (model.safetensors, pruning.json, report.json, report.md, channels.png)")
    return "\n".join(lines)


def score_summary(scores: dict[str, GroupScores], images: int, seconds: float, out: str) -> str:
    """Per-group score table with the split-half rank correlation, and a warning for unstable groups."""
    lines = [f"{'group':28}{'channels':>9}{'maps':>6}{'min':>11}{'median':>11}{'max':>11}{'split-half rho':>16}"]
    for k, v in scores.items():
        s = v.scores
        flag = "  unstable" if v.split_half_spearman < UNSTABLE_BELOW else ""
        lines.append(
            f"{k:28}{s.numel():>9}{len(v.maps):>6}{s.min():>11.4g}{s.median():>11.4g}{s.max():>11.4g}"
            f"{_rho(v.split_half_spearman):>16}{flag}"
        )
    lines.append(f"\nscored {len(scores)} groups on {images} images in {seconds:.1f} s; saved {out} and its .json twin")
    lines.extend(stability_warnings({k: v.split_half_spearman for k, v in scores.items()}))
    return "\n".join(lines)


def stability_warnings(rhos: dict[str, float | None]) -> list[str]:
    """A warning line when some groups rank their channels differently on two halves of the images
    (``rhos``: each group's split-half rank correlation; None or NaN when not computed)."""
    unstable = [k for k, rho in rhos.items() if rho is not None and rho < UNSTABLE_BELOW]
    if not unstable:
        return []
    return [
        f"warning: {len(unstable)} group(s) rank their channels differently on two halves of the calibration "
        f"images (Spearman < {UNSTABLE_BELOW}): {', '.join(unstable[:5])}{f' and {len(unstable) - 5} more' if len(unstable) > 5 else ''}. "
        "More calibration images (--calib-images) would make their pruning choice more reliable."
    ]


def plan_summary(model: str, groups: list[ChannelGroup], plan: Plan, params_before: int, macs_before: int, image_size: int) -> str:
    """The --dry-run table: channels per group, then params and MACs (per image_size x image_size image) before and after."""
    lines = [f"chipprune plan for {model}: {plan.description}" + (f", widths rounded to {plan.round_to}" if plan.round_to > 1 else ""), ""]
    lines.append(f"{'group':40}{'members':>8}{'asked':>8}{'removed':>9}{'channels':>16}")
    for g in groups:
        keep = plan.keep[g.name]
        # The count rule and --round-to make the removed fraction differ from the asked ratio.
        lines.append(
            f"{g.name:40}{len(g.members):>8}{plan.ratios.get(g.name, 0.0):>8.3f}{1 - keep / g.channels:>9.3f}"
            f"{f'{g.channels} -> {keep}':>16}"
        )
    lines += [
        "",
        f"{'':14}{'before':>16}{'after':>16}{'change':>10}",
        f"{'params':14}{params_before:>16,}{plan.params:>16,}{change(params_before, plan.params):>10}",
        f"{'MACs':14}{macs_before:>16,}{plan.macs:>16,}{change(macs_before, plan.macs):>10}  (one {image_size}x{image_size} image)",
    ]
    for batch, lat in plan.latency.items():
        lines.append(f"{'ms, batch ' + batch:14}{lat['original_ms']:>16.2f}{lat['predicted_ms']:>16.2f}"
                     f"{change(lat['original_ms'], lat['predicted_ms']):>10}  (predicted from the latency table)")
    lines += [f"note: {n}" for n in plan.notes]
    lines.append("(dry run: no weights touched)" if plan.latency else "(dry run: no scores computed, no weights touched)")
    return "\n".join(lines)
