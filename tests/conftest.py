from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


class EvilPickle:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(autouse=True)
def steady_clock(request, monkeypatch):
    """Every timing chipprune takes goes through ``evaluation.latency.time_call``; here it runs the
    timed call once and charges 0.05 ms plus 1 ms per million multiply-accumulates it performed: a
    noise-free machine, so no test's verdict or duration depends on the neighbours. Tests marked
    ``real_clock`` time for real (and must not assert on the times)."""
    if request.node.get_closest_marker("real_clock"):
        return
    from torch.utils.flop_counter import FlopCounterMode

    from chipprune.evaluation import latency

    def charge_by_work(run, batch_size, device, *, min_run_time, warmup=3):
        with FlopCounterMode(display=False) as counter:
            run()
        ms = 0.05 + counter.get_total_flops() / 2 * 1e-6
        return latency.Latency(batch_size, ms, 0.0, 1, device, ms)

    monkeypatch.setattr(latency, "time_call", charge_by_work)


@pytest.fixture
def shared() -> Path:
    if not (SHARED / "data" / "cifar10").is_dir():
        pytest.skip(f"real CIFAR-10 not present at {SHARED} (it is development data, not shipped)")
    return SHARED


def prune_with_plan(model, spec, request, batches=None, criterion="chip"):
    """Plan ``request`` (a PlanRequest) for ``model``, score the groups it shrinks on ``batches``
    with ``criterion`` and remove their channels: the library's steps, without data paths,
    evaluation or timing. Returns (plan, PruneResult)."""
    from chipprune.io.pruned import PruneResult
    from chipprune.pipeline import apply_plan
    from chipprune.planning import make_plan
    from chipprune.results import PruneReport
    from chipprune.scoring import get_criterion
    from chipprune.surgery import prunable_groups

    traced = prunable_groups(model, spec, list(request.ignored))
    plan = make_plan(model, spec, traced[1], request)
    shrunk = [g for g in traced[1] if plan.keep[g.name] < g.channels]
    scores = get_criterion(criterion).score(model, shrunk, batches=batches, dg=traced[0], progress=False)
    record = apply_plan(model, spec, plan, scores, traced, criterion=criterion)
    return plan, PruneResult(model, spec, record, PruneReport(spec.name, criterion, plan.description, None, None, 0, 0))
