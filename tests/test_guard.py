"""The guard around graph tracing stops runaway tracing in one line (no test waits on real time
beyond the guard's own short limits)."""

import time

import pytest

from chipprune import ChipPruneError
from chipprune.surgery.guard import tracing_guard


def test_tracing_that_runs_too_long_is_stopped():
    with pytest.raises(ChipPruneError, match=r"tracing Net ran over 1 s and was stopped"):
        with tracing_guard("Net", seconds=1.0):
            deadline = time.monotonic() + 30  # the guard must act long before this
            while time.monotonic() < deadline:
                sum(range(1000))
    # The timer is gone afterwards: nothing fires later.
    time.sleep(0.7)


def test_tracing_that_eats_memory_is_stopped():
    hoard = []
    with pytest.raises(ChipPruneError, match=r"took over 0\.1 GiB more memory"):
        with tracing_guard("Net", seconds=30.0, extra_bytes=100 * 2**20):
            for _ in range(400):  # up to 1.6 GB: the guard must act at about 100 MB
                hoard.append(bytearray(b"x" * (4 * 2**20)))  # written, so resident
                time.sleep(0.02)
    hoard.clear()


def test_tracing_within_limits_is_untouched():
    with tracing_guard("Net", seconds=30.0):
        total = sum(range(10_000))
    assert total == 49_995_000


def test_the_memory_limit_is_four_gib_or_half_the_machine():
    import os

    from chipprune.surgery.guard import TRACE_BYTES, trace_memory_limit

    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert trace_memory_limit() == max(TRACE_BYTES, physical // 2) >= 4 * 2**30
