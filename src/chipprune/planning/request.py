"""What a user asks a plan to achieve, and the one entry point that turns it into a Plan."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import ChipPruneError
from ..models.spec import ModelSpec
from ..scoring.streaming import GroupScores
from ..surgery.groups import ChannelGroup
from .latency_search import plan_for_latency_budget
from .macs import plan_for_macs
from .plan import Plan
from .sparsity import plan_for_sparsity

__all__ = ["PlanRequest", "make_plan"]


@dataclass(frozen=True)
class PlanRequest:
    """One of: a sparsity (a paper string, one ratio, a plan file), a MAC budget (``target_macs``),
    or a latency budget on this device (``target_latency``); none of them: the paper's setting.

    ``round_to`` keeps widths at multiples; ``ignored`` layers keep their output channels. The
    ``latency_*`` fields and ``max_shared_ratio`` only shape latency budgets (see
    ``plan_for_latency_budget``).
    """

    sparsity: str | None = None
    target_macs: float | None = None
    target_latency: str | float | None = None
    round_to: int = 1
    ignored: tuple[str, ...] = ()
    latency_batch_sizes: tuple[int, ...] = (1,)
    latency_table: str | Path | None = None
    max_shared_ratio: float = 0.3
    retime: bool = False  # latency budgets: time again every table entry the search uses

    def __post_init__(self) -> None:
        if self.round_to < 1:
            raise ChipPruneError(f"--round-to must be a positive integer, got {self.round_to}")
        if self.target_latency is not None and (self.sparsity is not None or self.target_macs is not None or self.round_to != 1):
            raise ChipPruneError("--target-latency chooses the widths itself: give it without --sparsity, --target-macs or --round-to")
        if self.sparsity is not None and self.target_macs is not None:
            raise ChipPruneError("give either --sparsity or --target-macs, not both")

    @property
    def needs_scores(self) -> bool:
        """Whether planning needs every group's scores first (they decide where time is cheapest to save)."""
        return self.target_latency is not None


def make_plan(
    model: nn.Module,
    spec: ModelSpec,
    groups: list[ChannelGroup],
    request: PlanRequest,
    scores: Mapping[str, GroupScores] | None = None,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Plan:
    """Channels per group for ``request`` (``scores`` of every group when ``request.needs_scores``);
    ``groups`` must be traced with ``request.ignored``."""
    if request.target_latency is not None:
        if scores is None:
            raise ChipPruneError("a latency budget needs the scores of every group first")
        plan = plan_for_latency_budget(
            model, spec, groups, scores, request.target_latency, batch_sizes=request.latency_batch_sizes,
            table=request.latency_table, max_shared_ratio=request.max_shared_ratio, retime=request.retime, device=device,
            progress=progress,
        )
    elif request.target_macs is not None:
        plan = plan_for_macs(model, spec, groups, request.target_macs, request.round_to)
    else:
        plan = plan_for_sparsity(model, spec, groups, request.sparsity, request.round_to)
    plan.ignored = tuple(request.ignored)
    round_to = request.round_to
    narrow = [g.name for g in groups if g.channels // g.channel_groups <= round_to and plan.keep[g.name] < g.channels]
    if round_to > 1 and narrow:
        plan.notes.append(
            f"{len(narrow)} group(s) with at most {round_to} channels (per block) are pruned without rounding "
            f"(--round-to {round_to} would leave them all or nothing): {', '.join(narrow[:3])}{' and more' if len(narrow) > 3 else ''}"
        )
    return plan
