"""Fine-tune a pruned folder, or train a model from scratch, and write the report.

The output folder is itself a pruned folder (``model.safetensors`` + ``pruning.json``), so
``load_pruned``, ``chipprune eval`` and ``chipprune export`` work on it unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .data import data_location, open_data
from .distributed import setup_distributed
from .files import read_json, write_json
from .latency import measure_latency
from .metrics import count_macs, count_params
from .models.registry import create_model
from .pipeline import load_model, open_pruned, pruning_record
from .report import write_report
from .train import TrainConfig, fit

__all__ = ["finetune", "train_from_scratch"]


def _latency(before: nn.Module, after: nn.Module, image_size: int, device: torch.device) -> dict[str, Any]:
    out = {}
    for batch in (1,):
        b = measure_latency(before, image_size, batch, device=device, min_run_time=0.5)
        a = measure_latency(after, image_size, batch, device=device, min_run_time=0.5)
        out[str(batch)] = {"before": b.median_ms, "after": a.median_ms, "device": str(device)}
    return out


def finetune(
    folder: str | Path, data: str | Path | None, config: TrainConfig, device: torch.device, *, model: str | None = None
) -> dict[str, Any] | None:
    """Fine-tune the pruned model in ``folder`` on ``data``; returns the report (None on ranks > 0).
    ``model``: see ``load_pruned`` (needed for a ``package.module:function`` model)."""
    dist_info = setup_distributed(device)
    folder = Path(folder)
    model, record, spec = open_pruned(folder, model=model)
    summary = fit(model, spec, open_data(data), config, dist_info)
    if not dist_info.is_main:
        return None
    pruned_report = read_json(folder / "report.json") if (folder / "report.json").is_file() else {}
    original = create_model(spec.name, record.get("num_classes")).eval()
    model = model.eval()
    report: dict[str, Any] = {
        "model": spec.name,
        "data_path": data_location(data),
        "criterion": record.get("criterion"),
        "sparsity": record.get("sparsity"),
        "params_before": count_params(original),
        "params_after": count_params(model),
        "macs_before": count_macs(original, spec.image_size),
        "macs_after": count_macs(model, spec.image_size),
        "top1_before": pruned_report.get("top1_before"),
        "top5_before": pruned_report.get("top5_before"),
        "top1_after": summary["test_top1"],
        "top5_after": summary["test_top5"],
        "test_images": summary["test_images"],
        "latency_ms": _latency(original, model, spec.image_size, dist_info.device),
        "finetune": {k: v for k, v in summary.items() if k != "history"},
    }
    if pruned_report.get("top1_after") is not None:  # None: the pruned model was not evaluated
        report["top1_after_pruning"] = pruned_report["top1_after"]
    write_json(Path(config.out) / "pruning.json", record)
    write_report(Path(config.out), report, record, summary["history"])
    return report


def train_from_scratch(
    name: str, data: str | Path | None, config: TrainConfig, device: torch.device, *, image_size: int | None = None,
    num_classes: int | None = None, weights: str | None = None,
) -> dict[str, Any] | None:
    """Train a registry model (random initialisation unless ``weights``) to obtain a baseline."""
    dist_info = setup_distributed(device)
    torch.manual_seed(config.seed)  # the same initial weights in every run with this seed
    model, spec = load_model(name, weights or "none", num_classes, image_size)
    summary = fit(model, spec, open_data(data), config, dist_info)
    if not dist_info.is_main:
        return None
    record = pruning_record(model, spec, [], criterion=None, sparsity="none (trained from scratch)")
    params, macs = count_params(model), count_macs(model, spec.image_size)
    report = {
        "model": spec.name,
        "data_path": data_location(data),
        "params_before": params,
        "params_after": params,
        "macs_before": macs,
        "macs_after": macs,
        "top1_before": None,
        "top1_after": summary["test_top1"],
        "top5_after": summary["test_top5"],
        "test_images": summary["test_images"],
        "finetune": {k: v for k, v in summary.items() if k != "history"},
    }
    write_json(Path(config.out) / "pruning.json", record)
    write_report(Path(config.out), report, record, summary["history"])
    return report
