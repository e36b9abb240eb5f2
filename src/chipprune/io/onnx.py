"""Export a pruned model to ONNX and check it with ONNX Runtime before declaring success."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.utils._pytree as pytree

from ..errors import ChipPruneError
from ..evaluation.latency import random_input
from ..models.spec import ModelSpec
from ..runtime import device_of
from .atomic import temporary_file_beside

__all__ = ["export_onnx", "onnx_metadata"]


def export_onnx(model: nn.Module, shape: int | ModelSpec, path: str | Path, *, atol: float = 1e-4, rtol: float = 1e-3,
                metadata: dict[str, str] | None = None) -> float:
    """Write ``model`` as ONNX to ``path`` and return the largest absolute difference between ONNX
    Runtime's and PyTorch's outputs on two random inputs. ``shape``: an image size, or the model's spec
    (its own input form: a list of images for torchvision's detectors). Image batches get a dynamic
    batch size (checked at batch 1 and 3). ``metadata``: strings stored in the file (a pruned folder
    records its weights' digest there).

    The file appears only after the check passed (written to a temporary name, then renamed).
    """
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise ChipPruneError("ONNX export needs the 'export' extra: pip install 'chipprune[export]'") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    # Exported and checked on the CPU; a model on another device is copied, not moved.
    model = model.eval() if device_of(model).type == "cpu" else copy.deepcopy(model).cpu().eval()
    example = random_input(shape, 1, generator=torch.Generator().manual_seed(0))
    batched = isinstance(example, torch.Tensor)  # an image batch: the batch size may vary
    fd, tmp = temporary_file_beside(path)
    os.close(fd)
    try:
        _export(model, example, tmp, batched)
        if metadata:
            proto = onnx.load(tmp)
            for key, value in metadata.items():
                proto.metadata_props.add(key=key, value=value)
            onnx.save(proto, tmp)
        onnx.checker.check_model(tmp)
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        worst = 0.0
        for batch in (1, 3):
            inputs = random_input(shape, batch if batched else 1, generator=torch.Generator().manual_seed(batch))
            worst = max(worst, _compare(model, session, inputs, atol, rtol))
        os.replace(tmp, path)
        return worst
    finally:
        Path(tmp).unlink(missing_ok=True)
        model.train(was_training)


def _export(model: nn.Module, example: Any, path: str, batched: bool) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter needs no extra packages and handles every model we prune.
        names = {"input_names": ["images"], "output_names": ["logits"],
                 "dynamic_axes": {"images": {0: "batch"}, "logits": {0: "batch"}}} if batched else {}
        try:
            torch.onnx.export(model, (example,), path, dynamo=False, opset_version=17, **names)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds; each means the same to a user
            raise ChipPruneError(f"ONNX export of {type(model).__name__} failed ({type(exc).__name__}: {str(exc)[:300]})") from None


def _compare(model: nn.Module, session, example: Any, atol: float, rtol: float) -> float:
    """The largest difference between ONNX Runtime's and PyTorch's outputs on ``example``; an error when they disagree."""
    inputs = [t.numpy() for t in pytree.tree_leaves(example)]
    with torch.no_grad():
        expected = [t.numpy() for t in pytree.tree_leaves(model(example)) if isinstance(t, torch.Tensor)]
    got = session.run(None, {i.name: x for i, x in zip(session.get_inputs(), inputs)})
    if len(expected) != len(got) or any(g.shape != e.shape for e, g in zip(expected, got)):
        raise ChipPruneError(f"ONNX Runtime's outputs {[x.shape for x in got]} differ from PyTorch's {[x.shape for x in expected]}; nothing written")
    worst = 0.0
    for e, g in zip(expected, got):
        if not _close(g, e, atol, rtol):
            # A detector's outputs are sorted by score: near-equal scores may come out in another
            # order. The same rows in another order are the same detections.
            e, g = _rows_sorted(e), _rows_sorted(g)
        if not _close(g, e, atol, rtol):
            raise ChipPruneError(f"ONNX Runtime's outputs differ from PyTorch's (max abs diff {float(np.abs(g - e).max()):.3g}); nothing written")
        worst = max(worst, float(np.abs(g - e).max()) if g.size else 0.0)
    return worst


def _close(got: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> bool:
    """Within ``atol`` plus ``rtol`` of the output's largest magnitude: float32 rounding in a sum of
    large terms leaves a small output with an error relative to the large ones, not to itself."""
    if got.size == 0:
        return True
    return bool(np.abs(got - expected).max() <= atol + rtol * np.abs(expected).max())


def _rows_sorted(a: np.ndarray) -> np.ndarray:
    rows = a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1)
    return rows[np.lexsort(rows.T[::-1])] if rows.size else rows


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The strings stored in an ONNX file's metadata (empty when it cannot be read)."""
    try:
        import onnx
    except ImportError:
        return {}
    try:
        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception:  # noqa: BLE001 - a damaged file: no metadata to trust
        return {}
