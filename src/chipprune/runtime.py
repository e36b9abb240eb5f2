"""Where chipprune runs: devices, and several processes under ``torchrun``.

Devices: ``resolve_device`` turns ``--device`` into a torch device, ``device_of`` finds a model's,
``autocast`` is mixed precision on CUDA and nothing elsewhere.

Processes: a plain ``python``/``chipprune`` run is one process and none of this does anything. Under
``torchrun --nproc-per-node N`` the environment names this process's rank; NCCL is used on GPUs,
gloo on CPUs.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.utils._pytree as pytree

from .errors import ChipPruneError

__all__ = [
    "resolve_device", "device_of", "autocast", "move_to", "batch_length", "machine_fingerprint", "machine_cache_file",
    "Dist", "setup_distributed", "teardown_distributed", "world", "all_reduce_sum", "barrier", "broadcast_module",
]


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``, ``cuda:N``, ...; a clear error otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ChipPruneError("--device cuda was asked for but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ChipPruneError(f"unknown --device '{name}'; use auto, cpu, cuda or cuda:N") from None


def device_of(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s parameters live (the CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def one_math_thread() -> Iterator[None]:
    """torch's intra-op threads set to one for the block, and set back after it (also on an error)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision on CUDA in ``dtype``; a no-op on other devices or when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None and device.type == "cuda")


def move_to(inputs, device: torch.device | str):
    """``inputs`` (a tensor, or lists, tuples and dicts of them, as a model takes them) on ``device``."""
    return pytree.tree_map_only(torch.Tensor, lambda t: t.to(device), inputs)


def batch_length(inputs) -> int:
    """How many samples a model input holds: a tensor's first dimension, a list of images' length
    (torchvision's detectors), the first tensor's of a tuple or dict."""
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.dim() else 1
    if isinstance(inputs, list) and inputs and all(isinstance(x, torch.Tensor) and x.dim() == 3 for x in inputs):
        return len(inputs)  # a list of (C, H, W) images
    values = list(inputs.values()) if isinstance(inputs, dict) else list(inputs) if isinstance(inputs, (list, tuple)) else []
    for value in values:
        if isinstance(value, (torch.Tensor, list, tuple, dict)):
            return batch_length(value)
    raise ChipPruneError(f"cannot tell how many samples a model input of type {type(inputs).__name__} holds; "
                         "give tensors (N, ...), lists of images, or tuples/dicts of tensors")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: torch.device) -> Dist:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, device)
    if not dist.is_initialized():
        # An hour, not NCCL's 10 minutes: in `chipprune run` the other processes wait while process 0
        # prunes and evaluates alone.
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=1))
    rank = dist.get_rank()
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Dist(rank, world, device)


def teardown_distributed() -> None:
    """Leave the process group, if one was joined. Without this, gloo's threads can outlive the
    interpreter and abort the process at exit ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, number of processes) of the running process group; (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all processes (a no-op in a single process)."""
    if world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def broadcast_module(module: torch.nn.Module) -> None:
    """Give every process process 0's parameters and buffers, in place (a no-op in a single process)."""
    if world()[1] > 1:
        with torch.no_grad():
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)


def machine_fingerprint(device: torch.device | str = "cpu") -> str:
    """What a measured table (layer latencies, decomposition placements) is valid for: the processor
    (or GPU), the threads and the torch version."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"cpu {_cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_cache_file(kind: str, device: torch.device | str = "cpu", *, with_cpu: bool = False) -> Path:
    """This machine's cached ``kind`` table: ``$CHIPPRUNE_CACHE_DIR`` (or ``~/.cache/chipprune``)/kind/<machine>.json.
    ``with_cpu``: the table also depends on the processor and threads beside a GPU."""
    root = Path(os.environ.get("CHIPPRUNE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chipprune")
    fingerprint = machine_fingerprint(device) + (f"; {machine_fingerprint('cpu')}" if with_cpu and torch.device(device).type != "cpu" else "")
    slug = re.sub(r"[^a-z0-9]+", "-", fingerprint.lower()).strip("-")[:60]
    return root / kind / f"{slug}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:8]}.json"
