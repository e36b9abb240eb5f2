"""A time and memory guard around graph tracing: a model Torch-Pruning cannot follow stops with one
line instead of recursing until the kernel kills the process (tracing swin_t grew to 23 GB in
329 s before chipprune refused vision transformers by name; a user's own network can do the same).

A timer interrupts the tracing every half second to look at the clock and at the process's
resident memory. Python runs signal handlers between bytecodes of the main thread, and the tracer
is Python code, so the check lands within moments; elsewhere (another thread, no SIGALRM) the
guard does nothing.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import ChipPruneError

__all__ = ["tracing_guard", "trace_memory_limit", "TRACE_SECONDS", "TRACE_BYTES"]

TRACE_SECONDS = 120.0  # the largest torchvision CNN traces in well under a minute on 2 cores
# Growth of resident memory while tracing: 4 GiB, or half the machine's memory where that is more.
# Tracing keeps every activation for the graph: a detector at its 800-pixel input legitimately
# takes over 4 GiB (fasterrcnn_resnet50_fpn_v2), while a runaway trace grows without end.
TRACE_BYTES = 4 * 2**30


def trace_memory_limit() -> int:
    """The tracing guard's default memory growth limit on this machine, in bytes."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        physical = 0
    return max(TRACE_BYTES, physical // 2)


class _Stop(BaseException):
    """Raised from the timer's handler; a BaseException, so `except Exception` cannot swallow it. (A bare
    `except:` in the tracer can; the timer keeps firing, so the next check stops it.)"""


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0  # unknown: only the clock guards


@contextmanager
def tracing_guard(what: str, seconds: float = TRACE_SECONDS, extra_bytes: int | None = None) -> Iterator[None]:
    """Stop the block with ChipPruneError once it has run ``seconds`` or grown the process by ``extra_bytes``
    (default ``trace_memory_limit()``)."""
    extra_bytes = trace_memory_limit() if extra_bytes is None else extra_bytes
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return
    started, base = time.monotonic(), _resident_bytes()

    def check(_signum, _frame) -> None:
        if time.monotonic() - started > seconds:
            raise _Stop(f"ran over {seconds:.0f} s")
        if base and _resident_bytes() - base > extra_bytes:
            raise _Stop(f"took over {extra_bytes / 2**30:.1f} GiB more memory")

    previous = signal.signal(signal.SIGALRM, check)
    earlier_timer = signal.setitimer(signal.ITIMER_REAL, 0.5, 0.5)
    try:
        yield
    except _Stop as exc:
        raise ChipPruneError(
            f"tracing {what} {exc} and was stopped: Torch-Pruning cannot follow this network's channels "
            "(docs/MODELS.md says which models prune); choose another architecture"
        ) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if previous is not None:  # None: a handler not installed from Python, which cannot be put back
            signal.signal(signal.SIGALRM, previous)
        if earlier_timer[0] > 0:  # a timer the caller had (less the time spent here)
            signal.setitimer(signal.ITIMER_REAL, max(0.001, earlier_timer[0] - (time.monotonic() - started)), earlier_timer[1])
