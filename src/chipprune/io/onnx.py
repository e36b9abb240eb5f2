"""Export a pruned model to ONNX and check it with ONNX Runtime before declaring success."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import ChipPruneError
from .atomic import temporary_file_beside
from ..runtime import device_of

__all__ = ["export_onnx", "onnx_metadata"]


def export_onnx(model: nn.Module, image_size: int, path: str | Path, *, atol: float = 1e-4, rtol: float = 1e-3,
                metadata: dict[str, str] | None = None) -> float:
    """Write ``model`` as ONNX (dynamic batch size) to ``path`` and return the largest absolute
    difference between ONNX Runtime's and PyTorch's outputs on random inputs (batch 1 and 3).
    ``metadata``: strings stored in the file (a pruned folder records its weights' digest there).

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
    example = torch.randn(1, 3, image_size, image_size)
    fd, tmp = temporary_file_beside(path)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The TorchScript-based exporter needs no extra packages and handles every model we prune.
            torch.onnx.export(
                model, (example,), tmp, dynamo=False, input_names=["images"], output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
            )
        if metadata:
            proto = onnx.load(tmp)
            for key, value in metadata.items():
                proto.metadata_props.add(key=key, value=value)
            onnx.save(proto, tmp)
        onnx.checker.check_model(tmp)
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        worst = 0.0
        for batch in (1, 3):
            x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(batch))
            with torch.no_grad():
                expected = model(x).numpy()
            got = session.run(None, {"images": x.numpy()})[0]
            if got.shape != expected.shape or not np.allclose(got, expected, atol=atol, rtol=rtol):
                diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
                raise ChipPruneError(f"ONNX Runtime's outputs differ from PyTorch's (max abs diff {diff:.3g}); nothing written")
            worst = max(worst, float(np.abs(got - expected).max()))
        os.replace(tmp, path)
        return worst
    finally:
        Path(tmp).unlink(missing_ok=True)
        model.train(was_training)


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
