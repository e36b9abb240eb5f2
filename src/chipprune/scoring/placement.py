"""Where the decompositions of channel independence run: on the GPU that ran the forward pass (with
cuSOLVER or MAGMA), or on CPU threads across all cores.

Why it is chosen by measurement: PyTorch's batched ``torch.linalg.eigh`` on CUDA uses a batched
solver only for small matrices (n <= 32) and loops over the batch above that, one small solve at a
time: on an H200, 16 CPU cores beat cuSOLVER from n = 64 to 256 and lost at n = 512
(docs/SCORING.md), and another machine's balance differs. So the first time
a (decomposition, size, device) is met, a short probe times each placement on a few random
matrices of that size and the fastest is used from then on; the choice is cached per machine next
to the latency tables (``~/.cache/chipprune/decompositions/``). ``decompositions_on("cpu")`` (CLI
``--decompose-on``) overrides the probe.

Everything else (Gram matrices, the quadrature) stays on the maps' device; only the (n, k, k) Gram
matrices (k = the smaller of channels and pixels; the rare SVD fallback sends the maps) travel to
the CPU and their factors back. The cache is keyed by the GPU, the CPU and its threads, and the
torch version: a choice for CPU threads holds only where the same cores are. Results are the same
function whichever placement runs them (float64 LAPACK, cuSOLVER or MAGMA, each to round-off).
"""

from __future__ import annotations

import functools
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

from ..errors import ChipPruneError
from ..io.atomic import read_json, write_json
from ..runtime import machine_cache_file, machine_fingerprint, one_math_thread

__all__ = ["PLACEMENTS", "decompositions_on", "eigh", "svd", "placement_table", "map_on_cpu_threads"]

T = TypeVar("T")

# "auto": the probe decides; "cpu": LAPACK on CPU threads; "cusolver" / "magma": on the maps' GPU
# with that library (torch.backends.cuda.preferred_linalg_library).
PLACEMENTS = ("auto", "cpu", "cusolver", "magma")
PROBE_MATRICES = 64  # matrices per probe timing: a calibration batch's worth, so CPU threads each get several
PROBE_ROUNDS = 3  # timings per placement; the median counts

_setting = {"placement": "auto"}
# (device, "operation shape") -> placement, chosen in this process (from the cache or a probe).
_chosen: dict[tuple[str, str], str] = {}
_refusals: set[tuple[str, str]] = set()  # (placement, "operation shape") a forced GPU placement refused, said once
# Under torchrun, processes other than each machine's first wait this long for its probe's result in
# the shared cache, instead of probing at the same time (their timings would skew each other's). After
# one wait in vain (an unwritable cache), a process probes for itself from then on.
PROBE_WAIT_S = 60.0
_wait = {"in_vain": False}
Timer = Callable[[str, str, tuple[int, ...], torch.device], float]  # (operation, placement, shape, device) -> s per matrix


@contextmanager
def decompositions_on(placement: str) -> Iterator[None]:
    """Run the decompositions inside the block at ``placement`` (one of PLACEMENTS)."""
    if placement not in PLACEMENTS:
        raise ChipPruneError(f"unknown decomposition placement '{placement}'; choose from {', '.join(PLACEMENTS)}")
    previous = _setting["placement"]
    _setting["placement"] = placement
    try:
        yield
    finally:
        _setting["placement"] = previous


def eigh(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` of a batch of symmetric matrices (ascending eigenvalues), where it is fastest."""
    return _run("eigh", torch.linalg.eigh, gram)


def _thin_svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, _ = torch.linalg.svd(a, full_matrices=False)
    return u, s


def svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors and singular values of a batch of matrices (thin SVD), where it is fastest."""
    return _run("svd", _thin_svd, a)


def _run(operation: str, fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if x.device.type != "cuda" or x.shape[0] == 0:
        return fn(x)  # on the CPU the caller already shares images among threads
    where = _placement(operation, tuple(x.shape[1:]), x.device)
    if where != "cpu":
        done = _on_gpu(where, operation, fn, x)
        if done is not None:
            return done
    return _on_cpu_threads(fn, x)


def _on_gpu(where: str, operation: str, fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], x: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """``fn(x)`` with the GPU library ``where``; None when it refuses the matrices (cuSOLVER's gesvdj has
    size limits), which LAPACK then does. A refusal of a placement the user forced is said, once per size."""
    try:
        with _linalg_library(where):
            return fn(x)
    except RuntimeError as exc:
        key = (where, _key(operation, tuple(x.shape[1:])))
        if _setting["placement"] == where and key not in _refusals:
            _refusals.add(key)
            warnings.warn(f"{where} refused {key[1]} matrices ({str(exc).splitlines()[0][:120]}); "
                          "they are decomposed on CPU threads instead")
        return None


def _on_cpu_threads(fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    host = x.cpu()
    workers = max(1, min(torch.get_num_threads(), host.shape[0]))
    parts = map_on_cpu_threads(fn, list(host.chunk(workers)), workers)
    return tuple(torch.cat(pieces).to(x.device) for pieces in zip(*parts))


@contextmanager
def _linalg_library(name: str) -> Iterator[None]:
    previous = torch.backends.cuda.preferred_linalg_library()
    torch.backends.cuda.preferred_linalg_library(name)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_linalg_library(previous)


def _candidates() -> list[str]:
    return ["cpu", "cusolver"] + (["magma"] if torch.cuda.has_magma else [])


def _key(operation: str, shape: tuple[int, ...]) -> str:
    return f"{operation} {'x'.join(map(str, shape))}"


def _placement(operation: str, shape: tuple[int, ...], device: torch.device, timer: Timer | None = None) -> str:
    asked = _setting["placement"]
    if asked != "auto":
        if asked == "magma" and not torch.cuda.has_magma:
            raise ChipPruneError("--decompose-on magma: this PyTorch was built without MAGMA; use cusolver or cpu")
        return asked
    key = _key(operation, shape)
    if (str(device), key) not in _chosen:
        entry = _cached_choice(device, key)
        if entry is None and _local_rank() > 0 and not _wait["in_vain"]:
            entry = _wait_for_choice(device, key)
            _wait["in_vain"] = entry is None
        if entry is None:
            entry = probe(operation, shape, device, timer)
            table = placement_table(device)  # read again: another process may have added sizes meanwhile
            table["choices"][key] = entry
            try:
                write_json(_cache_path(device), table)
            except (ChipPruneError, OSError):
                pass  # an unwritable cache (a read-only home): the choice holds for this process only
        _chosen[str(device), key] = entry["placement"]
    return _chosen[str(device), key]


def _cached_choice(device: torch.device, key: str) -> dict | None:
    entry = placement_table(device)["choices"].get(key)
    return entry if isinstance(entry, dict) and entry.get("placement") in _candidates() else None


def _local_rank() -> int:
    """This process's rank among torchrun's processes on this machine (0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1 else 0


def _wait_for_choice(device: torch.device, key: str) -> dict | None:
    """The choice the machine's first process probes and caches, once it appears (None after PROBE_WAIT_S)."""
    deadline = _clock() + PROBE_WAIT_S
    while _clock() < deadline:
        _sleep(0.2)
        entry = _cached_choice(device, key)
        if entry is not None:
            return entry
    return None


_clock, _sleep = time.monotonic, time.sleep  # replaced in tests


def _cache_path(device: torch.device):
    return machine_cache_file("decompositions", device, with_cpu=True)


def placement_table(device: torch.device) -> dict:
    """This machine's cached probe results: {"machine": .., "choices": {"eigh 256x256": {"placement": .., "seconds": {..}}}}."""
    path = _cache_path(device)
    try:
        table = read_json(path) if path.is_file() else None
    except (OSError, ValueError, ChipPruneError):
        table = None  # a damaged cache is probed again
    if not isinstance(table, dict) or not isinstance(table.get("choices"), dict):
        table = {"machine": machine_fingerprint(device), "choices": {}}
    return table


def probe(operation: str, shape: tuple[int, ...], device: torch.device, timer: Timer | None = None) -> dict:
    """Time each placement on PROBE_MATRICES random matrices of ``shape``; the fastest, and every time (s per matrix)."""
    timer = timer or _time_placement
    seconds, failed = {}, {}
    for where in _candidates():
        try:
            seconds[where] = timer(operation, where, shape, device)
        except RuntimeError as exc:  # this library cannot do this size here: never chosen
            failed[where] = str(exc).splitlines()[0][:200]
    if not seconds:
        raise ChipPruneError(f"no placement could run {operation} of {shape} matrices: {failed}")
    return {"placement": min(seconds, key=seconds.__getitem__), "seconds": seconds, **({"failed": failed} if failed else {})}


def _time_placement(operation: str, where: str, shape: tuple[int, ...], device: torch.device) -> float:
    generator = torch.Generator(device=device).manual_seed(0)  # not the caller's random stream
    x = torch.randn(PROBE_MATRICES, *shape, dtype=torch.float64, device=device, generator=generator)
    if operation == "eigh":
        x = x @ x.mT
    run = functools.partial(_placed, operation, where, x)
    run()  # warm-up: library handles, workspaces, threads
    times = []
    for _ in range(PROBE_ROUNDS):
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        run()
        torch.cuda.synchronize(device)
        times.append((time.perf_counter() - started) / PROBE_MATRICES)
    return statistics.median(times)


def _placed(operation: str, where: str, x: torch.Tensor) -> None:
    fn = torch.linalg.eigh if operation == "eigh" else _thin_svd
    if where == "cpu":
        with decompositions_on("cpu"):
            _run(operation, fn, x)
    else:  # the library itself, without _run's fallback: a failure must show in the probe
        with _linalg_library(where):
            fn(x)


@functools.lru_cache(maxsize=None)
def _pool(workers: int) -> ThreadPoolExecutor:
    # Kept for the process: a fresh thread pays the math library's set-up again.
    return ThreadPoolExecutor(workers, thread_name_prefix="chipprune-ci")


def map_on_cpu_threads(fn: Callable[[torch.Tensor], T], items: list[torch.Tensor], workers: int) -> list[T]:
    """``[fn(x) for x in items]`` on ``workers`` threads with one math-library thread each.

    LAPACK's eigensolver gains little from threads at these sizes, while independent images split
    over threads scale almost linearly (measured 1.9x on 2 cores). The process-wide thread setting
    is restored afterwards, so the forward passes around scoring keep all cores.
    """
    def one_thread(x: torch.Tensor) -> T:
        torch.set_num_threads(1)
        return fn(x)

    with one_math_thread():
        return list(_pool(workers).map(one_thread, items))
