from __future__ import annotations

import os
from dataclasses import dataclass
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
    noise-free machine, so no test's verdict or duration depends on the neighbours (tests/steadyclock.py;
    CLI runs in processes of their own get it through ``python -m steadyclock``). Tests marked
    ``real_clock`` time for real (and must not assert on the times)."""
    if request.node.get_closest_marker("real_clock"):
        return
    from chipprune.evaluation import latency
    from steadyclock import charge_by_work

    monkeypatch.setattr(latency, "time_call", charge_by_work)


@pytest.fixture(scope="session")
def small_cifar(tmp_path_factory) -> str:
    """A ten-class ImageFolder of CIFAR-size (32x32) noise images, 13 per class in train/ (130) and 3
    in test/ (30), made once. For tests whose runs evaluate on the test split, perhaps many times,
    and assert nothing that depends on how many images it holds: the bundled sample's 1,000 test
    images made them some of the slowest. (Read only: copy it to change it.)"""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("small-cifar")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 13), ("test", 3)):
        for c in range(10):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return str(root)


@dataclass(frozen=True)
class DefaultJob:
    exit_code: int
    out: Path  # the pruned folder
    stdout: str


@pytest.fixture(scope="session")
def default_job(tmp_path_factory) -> DefaultJob:
    """The README's first command, ``chipprune prune`` with every default (ResNet-56, the paper's
    setting, bundled weights and data; 640 calibration images), run once: its exit status, folder and
    printed output. Its scoring and its four passes over the 1,000 test images make it the slowest
    thing the tests do, so the tests that only read its results share it. (Read only: copy it to change it.)"""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("default-job") / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = run_cli(["prune", "--out", str(out), "--quiet"])
    return DefaultJob(code, out, printed.getvalue())


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
