"""Atomic writes of JSON and safetensors files: a reader sees the old file or the new one, never half."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import save

from ..errors import ChipPruneError

__all__ = ["atomic_write_bytes", "write_json", "json_safe", "read_json", "save_state_dict", "save_tensors"]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a half."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temporary_file_beside(path)
    except OSError as exc:
        raise ChipPruneError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temporary_file_beside(path: Path) -> tuple[int, str]:
    """A new hidden file in ``path``'s folder (to be renamed onto ``path``), readable as the umask allows:
    mkstemp's files are private (0600), which would hide the results from a user's team."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~UMASK)
    except OSError:  # file systems without permissions (FAT, some network mounts): leave them be
        pass
    return fd, tmp


def _read_umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


UMASK = _read_umask()  # read once, at import: setting it briefly is visible to every thread


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON, atomically; NaN and infinities (not computed, no data) become null."""
    atomic_write_bytes(path, (json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n").encode())


def json_safe(obj: Any) -> Any:
    """``obj`` as write_json writes it: NaN and infinities become None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ChipPruneError(f"file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ChipPruneError(f"{path} is not valid JSON: {exc}") from None


def save_state_dict(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Save ``model``'s state dict as safetensors, atomically."""
    save_tensors({k: v for k, v in model.state_dict().items()}, path, metadata)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Save named tensors as safetensors, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(state, metadata=metadata))
