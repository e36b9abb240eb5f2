"""Fine-tune a pruned folder, or train a model from scratch, and write the report.

The output folder is itself a pruned folder (``model.safetensors`` + ``pruning.json``), so
``load_pruned``, ``chipprune eval`` and ``chipprune export`` work on it unchanged.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from ..data.sources import data_location, open_data
from ..evaluation.latency import compare_models
from ..evaluation.metrics import count_macs, count_params
from ..errors import ChipPruneError
from ..io.folder import claim_folder, file_sha256
from ..io.pruned import open_pruned, pruning_record, read_report, write_pruned_files
from ..models.registry import load_model
from ..models.spec import ModelSpec
from ..reporting.markdown import write_report
from ..results import FinetuneReport
from ..runtime import Dist, setup_distributed
from .loop import TrainConfig, fit

__all__ = ["finetune", "train_from_scratch", "load_teacher"]


def finetune(
    folder: str | Path, data: str | Path | None, config: TrainConfig, device: torch.device, *, model: str | None = None,
    teacher_weights: str | None = None,
) -> FinetuneReport | None:
    """Fine-tune the pruned model in ``folder`` on ``data``; returns the report (None on ranks > 0).
    ``model``: see ``load_pruned`` (needed for a ``package.module:function`` model). With a recipe that
    distils, the teacher is the unpruned model: ``teacher_weights``, or the weights the folder records."""
    net, record, spec = open_pruned(folder, model=model)
    spec.require_classifier("chipprune finetune")
    dist_info = setup_distributed(device)
    teacher = load_teacher(folder, record, teacher_weights) if config.recipe.distill_weight > 0 else None
    # A checkpoint of other weights (the folder was pruned again since) must not be resumed.
    config = replace(config, source_weights=record.get("weights_sha256"))
    with _output(config, dist_info):
        return _finetune(folder, net, record, spec, data, config, dist_info, teacher)


def _finetune(folder: str | Path, net: torch.nn.Module, record: dict, spec: ModelSpec, data: str | Path | None, config: TrainConfig,
              dist_info: Dist, teacher: torch.nn.Module | None) -> FinetuneReport | None:
    summary = fit(net, spec, open_data(data), config, dist_info, teacher)
    if not dist_info.is_main:
        return None
    pruned = read_report(folder)  # what the pruning run measured
    original = spec.build(record.get("num_classes")).eval()
    net = net.eval()
    report = FinetuneReport(
        model=spec.name, data_path=data_location(data), criterion=record.get("criterion"), sparsity=record.get("sparsity"),
        params_before=count_params(original), params_after=count_params(net),
        macs_before=count_macs(original, spec.example_input()), macs_after=count_macs(net, spec.example_input()),
        top1_after=summary.test_top1, top5_after=summary.test_top5, test_images=summary.test_images, finetune=summary,
        top1_before=pruned.get("top1_before"), top5_before=pruned.get("top5_before"), top1_after_pruning=pruned.get("top1_after"),
        # The original has the pruned model's architecture before pruning, with random weights: speed does not depend on them.
        latency_ms=compare_models(original, net, spec, [1], device=dist_info.device, progress=config.progress),
    )
    write_report(Path(config.out), report, write_pruned_files(Path(config.out), net, record))
    return report


def load_teacher(folder: str | Path, record: dict, weights: str | None = None) -> torch.nn.Module:
    """The unpruned model ``folder`` was pruned from, to teach the pruned one: built afresh with
    ``weights``, or with the weights the folder records (checked to be the same file by its digest)."""
    recorded = record.get("original_weights") or {}
    source = weights or recorded.get("path")
    if source is None:
        raise ChipPruneError(f"distillation needs the unpruned model, and {folder} does not record the weights it was pruned from "
                             "(pruned by an older chipprune, or from Python); give --teacher-weights FILE")
    if source == "none":
        raise ChipPruneError(f"{folder} was pruned from a randomly initialised model, which cannot teach; give --teacher-weights FILE")
    if weights is None and recorded.get("sha256") and (not Path(source).is_file() or file_sha256(source) != recorded["sha256"]):
        raise ChipPruneError(f"the weights {folder} was pruned from ({source}) are gone or have changed since; give --teacher-weights FILE")
    teacher, _ = load_model(record["model"], source, record.get("num_classes"), record.get("image_size"))
    return teacher


def train_from_scratch(
    name: str, data: str | Path | None, config: TrainConfig, device: torch.device, *, image_size: int | None = None,
    num_classes: int | None = None, weights: str | None = None,
) -> FinetuneReport | None:
    """Train a registry model (random initialisation unless ``weights``) to obtain a baseline."""
    dist_info = setup_distributed(device)
    torch.manual_seed(config.seed)  # the same initial weights in every run with this seed
    model, spec = load_model(name, weights or "none", num_classes, image_size)
    spec.require_classifier("chipprune train")
    with _output(config, dist_info):
        summary = fit(model, spec, open_data(data), config, dist_info)
        if not dist_info.is_main:
            return None
        record = pruning_record(model, spec, [], criterion=None, sparsity="none (trained from scratch)")
        params, macs = count_params(model), count_macs(model, spec.example_input())
        report = FinetuneReport(
            model=spec.name, data_path=data_location(data), criterion=None, sparsity=None, params_before=params,
            params_after=params, macs_before=macs, macs_after=macs, top1_after=summary.test_top1, top5_after=summary.test_top5,
            test_images=summary.test_images, finetune=summary,
        )
        write_report(Path(config.out), report, write_pruned_files(Path(config.out), model, record))
    return report


@contextmanager
def _output(config: TrainConfig, dist_info: Dist) -> Iterator[None]:
    """Process 0 holds ``config.out`` for the run: an earlier run's folder is continued (``resume``),
    cleared (``overwrite``: the user starts over) or refused."""
    if not dist_info.is_main:
        yield
        return
    with claim_folder(config.out, overwrite=config.overwrite, resumable=config.resume):
        if config.overwrite and not config.resume and Path(config.out).is_dir():
            shutil.rmtree(config.out)
        yield
