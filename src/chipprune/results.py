"""What chipprune's runs report, as typed records: a prune, a fine-tune (or training run), a pilot.

Producers fill these; the console summaries, report.md and pilot.md read them; ``to_json`` gives
the report.json / pilot.json a folder keeps (NaN becomes null there). Every latency is a
``Comparison``: original and pruned timed in alternating rounds, medians over the rounds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .evaluation.latency import Comparison

__all__ = ["PruneReport", "FitSummary", "FinetuneReport", "PilotBaseline", "PilotLevel", "PilotReport"]


@dataclass
class PruneReport:
    """One pruning run: sizes, accuracy before and after (when test data was there), latency (for
    latency budgets), and where the time went."""

    model: str
    criterion: str
    sparsity: str
    data: str | None  # a description of the data, for people
    data_path: str | None  # where it is ('bundled' or an absolute path), for later commands
    params_before: int
    macs_before: int
    params_after: int = 0
    macs_after: int = 0
    calibration_images: int = 0
    test_images: int | None = None
    top1_before: float | None = None
    top5_before: float | None = None
    top1_after_no_bn_recalibration: float | None = None
    top5_after_no_bn_recalibration: float | None = None
    top1_after: float | None = None
    top5_after: float | None = None
    bn_recalibrated: bool = False
    bn_recalibration_images: int = 0
    # A user's own measure (the Python API's ``evaluate(model) -> float``), before and after.
    metric_before: float | None = None
    metric_after: float | None = None
    not_measured: str | None = None  # why no quality figure was measured, said in the summary
    latency_ms: dict[str, Comparison] = field(default_factory=dict)  # by batch size
    # Latency plans, by batch size: the table's prediction ({original_ms, predicted_ms}, at the table's
    # reference speed: compare speed-ups, not milliseconds) and the predicted speed-up.
    predicted_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    predicted_speedup: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step

    @property
    def evaluated(self) -> bool:
        return self.top1_before is not None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitSummary:
    """One training run (fine-tuning or from scratch), as the training loop reports it."""

    recipe: dict[str, Any]
    seed: int
    processes: int
    train_images: int
    val_images: int
    selected_epoch: int
    best_val_top1: float | None
    test_top1: float
    test_top5: float
    test_images: int
    train_seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch

    def to_json(self) -> dict[str, Any]:
        """Without the history, which metrics.json/metrics.csv hold."""
        return {k: v for k, v in asdict(self).items() if k != "history"}


@dataclass
class FinetuneReport:
    """A fine-tuned pruned model (or one trained from scratch, with no 'before')."""

    model: str
    data_path: str | None
    criterion: str | None
    sparsity: str | None
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    top1_after: float
    top5_after: float
    test_images: int
    finetune: FitSummary
    top1_before: float | None = None  # the unpruned model, as the pruning run measured it
    top5_before: float | None = None
    top1_after_pruning: float | None = None  # right after pruning, before fine-tuning
    latency_ms: dict[str, Comparison] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "finetune": self.finetune.to_json()}


@dataclass
class PilotBaseline:
    """The unpruned model in a pilot."""

    params: int
    macs: int
    top1: float
    top1_interval: tuple[float, float]
    test_images: int
    throughput_batch: int
    # The original's median latency at batch 1 and at the throughput batch, over the levels' rounds.
    latency_ms: float = float("nan")
    throughput_ms: float = float("nan")


@dataclass
class PilotLevel:
    """One compression level of a pilot: sizes, accuracy with its intervals, latency against the original."""

    target: float  # MAC budget as a fraction of the original
    params: int
    macs: int
    top1: float
    top1_low: float
    top1_high: float
    drop: float  # points, original minus pruned, on the same images
    drop_low: float
    drop_high: float
    finetune_epochs: int
    latency: Comparison  # batch 1
    throughput: Comparison  # the pilot's throughput batch

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PilotLevel:
        """A level a pilot saved; TypeError or KeyError when it was saved in another form."""
        return cls(**{**data, "latency": Comparison(**data["latency"]), "throughput": Comparison(**data["throughput"])})


@dataclass
class PilotReport:
    """A pilot sweep and its recommendation (None: no level is safe)."""

    model: str
    data: str
    criterion: str
    confidence: float
    max_drop: float
    baseline: PilotBaseline
    levels: list[PilotLevel]
    recommended: PilotLevel | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

