"""Layer sensitivity: prune one group at a time at a few ratios and record the accuracy drop."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..data.calibration import Calibration
from ..data.sources import open_data
from ..evaluation.metrics import correct_flags, recalibrate_batchnorm
from ..io.atomic import write_json
from ..models.spec import ModelSpec
from ..pipeline import apply_plan
from ..planning.plan import Plan, keep_counts
from ..planning.sparsity import plan_from_patterns
from ..reporting.plots import plot_sensitivity
from ..scoring.criteria import get_criterion
from ..surgery.groups import prunable_groups
from .stats import paired_drop_interval
from .sweep import test_loader_for

__all__ = ["sensitivity"]


def sensitivity(
    model: nn.Module,
    spec: ModelSpec,
    data: str | Path | None,
    out: str | Path,
    *,
    ratios: Sequence[float] = (0.3, 0.5, 0.7),
    calibration: Calibration | None = None,
    max_drop: float = 1.0,
    criterion: str = "chip",
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Prune one group at a time at each ratio (BN re-estimated, no fine-tuning) and record the drop.

    Writes sensitivity.json, sensitivity.png and suggested_plan.json: per group the largest tried
    ratio whose drop stayed within ``max_drop`` (a plan file ``chipprune prune --sparsity`` accepts).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    calibration, chosen = calibration or Calibration(data=data), get_criterion(criterion)
    source = open_data(data)
    test_loader = test_loader_for(spec, source)
    model = model.to(device).eval()
    base_flags = correct_flags(model, test_loader, device)
    dg, groups, _ = prunable_groups(model, spec)
    loader = calibration.loader(spec, source) if chosen.needs_images else None
    scores = chosen.score(model, groups, batches=loader, dg=dg, device=device, seed=calibration.seed, progress=progress)
    drops: dict[str, dict[str, float]] = {}
    for g in groups:
        drops[g.name] = {}
        for ratio in ratios:
            candidate = copy.deepcopy(model)
            traced = prunable_groups(candidate, spec)
            # Only group g loses channels; no size estimate is needed, so the plan is written directly.
            keep = {c.name: c.channels for c in traced[1]} | keep_counts([g], {g.name: ratio})
            apply_plan(candidate, spec, Plan({g.name: ratio}, keep, f"{g.name} at {ratio:g}"), scores, traced, criterion=chosen.name)
            recalibrate_batchnorm(candidate, calibration.loader(spec, source), device)
            drops[g.name][f"{ratio:g}"] = paired_drop_interval(base_flags, correct_flags(candidate, test_loader, device))[0]
        if progress:
            print(f"{g.name:32} " + "  ".join(f"{r:g}: {d:+.2f}" for r, d in drops[g.name].items()))
    suggested = {g.name: max(ok) for g in groups if (ok := [r for r in ratios if drops[g.name][f"{r:g}"] <= max_drop])}
    plan_from_patterns(suggested, groups, "suggested plan")  # the file must be accepted by `prune`
    write_json(out / "suggested_plan.json", suggested)
    write_json(out / "sensitivity.json", {"model": spec.name, "ratios": list(ratios), "max_drop": max_drop, "drops": drops})
    plot_sensitivity(out / "sensitivity.png", drops, ratios)
    return {"drops": drops, "suggested_plan": suggested}
