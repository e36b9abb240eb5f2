"""Load weights from files without running pickled code.

Accepted: safetensors files; ``torch.save`` files read with ``weights_only=True`` holding a state
dict directly or under ``state_dict`` / ``model`` / ``model_state_dict`` (DataParallel ``module.``
prefixes are stripped, CUDA-saved tensors are mapped to the CPU).
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import ChipPruneError
from .folder import file_sha256

__all__ = ["read_state_dict", "load_weights", "pickled_code", "weights_reference"]

_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "net")


def pickled_code(exc: pickle.UnpicklingError) -> str | None:
    """The code a file refused by ``torch.load(weights_only=True)`` asked to run (``posix.system``),
    or None when the file is merely damaged. torch has worded this several ways across versions."""
    match = re.search(r"(?:GLOBAL|global|class)[: ]+([A-Za-z_][\w.]*)", str(exc))
    return match.group(1) if match and ("nsupported" in str(exc) or "blocked" in str(exc)) else None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` (safetensors or a weights-only torch file)."""
    path = Path(path)
    if not path.is_file():
        raise ChipPruneError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ChipPruneError(f"cannot read safetensors file {path}: {exc}") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            code = pickled_code(exc)
            if code is None:  # not code, just bytes the unpickler cannot read
                raise ChipPruneError(f"cannot read weights file {path}: not a PyTorch file, or truncated or corrupt") from None
            raise ChipPruneError(
                f"{path} is not a plain weights file: it needs pickled code to load ({code}), which chipprune never runs. "
                "Save a state_dict or safetensors instead"
            ) from None
        except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on a damaged file
            reason = str(exc) or type(exc).__name__
            raise ChipPruneError(f"cannot read weights file {path}: not a PyTorch file, or truncated or corrupt ({reason})") from None
    for key in _NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ChipPruneError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: nn.Module, path: str | Path, *, advice: str = "Check that --model names the architecture the weights were trained for.") -> nn.Module:
    """Load ``path`` into ``model`` strictly; a mismatch names the first differing tensors, then ``advice``."""
    state = read_state_dict(path)
    own = model.state_dict()
    # Checkpoints from PyTorch < 0.4.1 lack BatchNorm's step counter; it does not affect outputs.
    for k in own:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = own[k]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if wrong_shape:
            parts.append("shape mismatch " + "; ".join(wrong_shape[:3]))
        if missing:
            parts.append("missing " + ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""))
        if unexpected:
            parts.append("unexpected " + ", ".join(unexpected[:3]) + (" ..." if len(unexpected) > 3 else ""))
        raise ChipPruneError(
            f"weights in {path} do not fit this model ({'; '.join(parts)}). {advice}"
        )
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise ChipPruneError(f"weights in {path} hold infinite or NaN values ({', '.join(broken[:3])}"
                             f"{' ...' if len(broken) > 3 else ''}): the file is damaged, or the training that wrote it diverged")
    # safetensors keeps no per-module version metadata; some modules (torchvision's MNASNet) need it.
    state = OrderedDict(state)
    state._metadata = getattr(own, "_metadata", None)  # type: ignore[attr-defined]
    model.load_state_dict(state)
    return model


def weights_reference(weights: str | None) -> dict[str, str | None]:
    """How a run records the weights it started from: 'bundled', 'none', or a file's absolute path
    with its SHA-256 (so that a later run, such as distillation from the original, finds the same file)."""
    if weights is None or weights in ("bundled", "none"):
        return {"path": weights or "none", "sha256": None}
    path = Path(weights).resolve()
    return {"path": str(path), "sha256": file_sha256(path) if path.is_file() else None}
