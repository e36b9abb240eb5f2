from __future__ import annotations

import os
from pathlib import Path

# One math thread per test process (subprocesses, CLI runs and torchrun, inherit it). The tests run
# many small ops, where a second thread costs more than it gives: with torch's default (a thread per
# core) a selection of them took about 1.5x as long beside one and beside three busy processes
# (bench/busy_neighbours.py, docs/busy_neighbours.txt; that bench alone sets CHIPPRUNE_BENCH_THREADS).
PIN_ONE_THREAD = os.environ.get("CHIPPRUNE_BENCH_THREADS") != "default"
if PIN_ONE_THREAD:
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

if PIN_ONE_THREAD:
    torch.set_num_threads(1)

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
    """Plan ``request`` (a PlanRequest) for ``model`` and prune it to the plan, scoring on
    ``batches``. Returns (plan, PruneResult)."""
    from chipprune.pipeline import prune_to_plan
    from chipprune.planning import make_plan
    from chipprune.surgery import prunable_groups

    plan = make_plan(model, spec, prunable_groups(model, spec, list(request.ignored))[1], request)
    return plan, prune_to_plan(model, spec, plan, batches=batches, criterion=criterion, progress=False)


def run_cli(argv: list[str]) -> int:
    """The CLI's exit status for ``argv``, in this process (argparse's errors exit through SystemExit)."""
    from chipprune.cli import main

    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
