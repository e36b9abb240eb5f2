"""Training checkpoints: written atomically, read without unpickling code, refused when they belong
to a run with other settings."""

from __future__ import annotations

import csv
import io
import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import ChipPruneError
from ..io.atomic import atomic_write_bytes, write_json
from ..io.weights import pickled_code

__all__ = ["read_checkpoint", "write_checkpoint", "check_resumable", "write_metrics"]


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a training checkpoint without unpickling code (weights_only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        code = pickled_code(exc)
        what = f"it needs pickled code to load ({code}), which chipprune never runs" if code else "truncated or corrupt"
        raise ChipPruneError(f"cannot read checkpoint {path}: {what}; --overwrite starts over") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt checkpoint gets one message
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ChipPruneError(f"cannot read checkpoint {path}: truncated or corrupt ({reason}); --overwrite starts over") from None


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` into memory, then one atomic write: an interruption leaves the previous checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def check_resumable(ckpt: dict[str, Any], settings: dict[str, Any], processes: int, path: Path) -> None:
    """Refuse a checkpoint written with other settings (older checkpoints record only the recipe)."""
    saved = ckpt.get("settings", ckpt.get("recipe", {}))
    changed = [f"{k} {saved[k]!r} -> {v!r}" for k, v in settings.items() if k in saved and saved[k] != v]
    if ckpt.get("step_in_epoch", 0) and ckpt.get("processes", processes) != processes:
        # Inside an epoch the remaining images depend on how they were shared out.
        changed.append(f"processes {ckpt['processes']} -> {processes} (allowed only at an epoch's end)")
    if changed:
        raise ChipPruneError(
            f"{path} belongs to a run with other settings ({'; '.join(changed)}); "
            "resume with the same settings, or start over with --overwrite (or another --out)"
        )


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """metrics.json and metrics.csv: one row per epoch."""
    write_json(out / "metrics.json", history)
    fields = sorted({k for row in history for k in row}, key=lambda k: list(history[-1]).index(k) if k in history[-1] else 99)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(out / "metrics.csv", buffer.getvalue().encode())
