"""The pruned-folder format: ``model.safetensors`` (weights), ``pruning.json`` (how to rebuild the
architecture: the model's name and the channels each group lost) and ``report.json``.

Loading builds the named model afresh, replays the recorded removals and loads the weights:
nothing is unpickled, and no code runs that the user did not name.

The files are one unit. ``pruning.json`` records the SHA-256 of the weights file it was written
with, and the weights file records (in its safetensors metadata) the SHA-256 of the record; loading
checks both, so a weights file from another run, or a record changed after the fact, is refused
instead of giving wrong results. A folder from ``prune`` is also filled beside its destination and
renamed into place (io/folder.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hashlib
import json
import warnings

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from .._version import __version__
from ..errors import ChipPruneError
from ..models.registry import get_model_spec
from ..models.spec import ModelSpec
from ..models.user import is_user_factory
from ..reporting.markdown import write_prune_report
from ..runtime import device_of
from ..surgery.apply import GroupRemoval, prune_group
from ..surgery.groups import build_graph, classifier_outputs, find_classifier
from .atomic import json_safe, read_json, save_state_dict, write_json
from .folder import file_sha256, new_folder
from .weights import load_weights

__all__ = [
    "PRUNED_FORMAT", "PruneResult", "pruning_record", "save_pruned", "write_pruned_files", "read_pruned_record", "open_pruned",
    "load_pruned", "read_report",
]

PRUNED_FORMAT = "chipprune-pruned/1"
_RECORD_DIGEST = "chipprune_record_sha256"  # safetensors metadata key


@dataclass
class PruneResult:
    """A pruned model with everything needed to save it and to report on it."""

    model: nn.Module
    spec: ModelSpec
    record: dict[str, Any]  # pruning.json
    report: Any  # a PruneReport (report.json)
    notes: list[str] = field(default_factory=list)


def pruning_record(
    model: nn.Module,
    spec: ModelSpec,
    removals: list[GroupRemoval],
    *,
    criterion: str | None,
    sparsity: str,
    outputs: list[str] | None = None,
    round_to: int = 1,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The ``pruning.json`` that lets ``load_pruned`` rebuild ``model``: its name, input and the
    channels each group lost (no removals: the model as built). ``outputs``: its output layers
    (found again when not given)."""
    if outputs is None:
        outputs = [find_classifier(model.eval(), spec.example_input(device_of(model)))]
    classifier = outputs[-1] if spec.task == "classification" and len(outputs) == 1 else None
    return {
        "format": PRUNED_FORMAT,
        "chipprune_version": __version__,
        "model": spec.name,
        "task": spec.task,
        "family": spec.family,
        # A classifier's classes are its output layer's width; other models record the count they were built with.
        "num_classes": classifier_outputs(model, classifier) if classifier else (spec.num_classes or None),
        "image_size": spec.image_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "classifier": classifier,
        "output_layers": list(outputs),
        "criterion": criterion,
        "sparsity": sparsity,
        "round_to": round_to,
        "notes": list(notes or []),
        "groups": [asdict(r) for r in removals],
    }


def save_pruned(result: PruneResult, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``model.safetensors``, ``pruning.json``, ``report.json``, ``report.md`` and ``channels.png`` as a new ``folder``: filled
    beside it and renamed into place. An existing folder with files is replaced as a whole only with
    ``overwrite`` (files derived from it, such as ``model.onnx`` or ``finetuned/``, go with it)."""
    folder = Path(folder)
    with new_folder(folder, overwrite=overwrite) as tmp:
        record = write_pruned_files(tmp, result.model, result.record, result.report.to_json())
        write_prune_report(tmp, result.report, record)
    return folder


def write_pruned_files(folder: Path, model: nn.Module, record: dict[str, Any], report: dict[str, Any] | None = None) -> dict[str, Any]:
    """The weights (carrying the record's digest), then ``pruning.json`` (carrying the weights'),
    then ``report.json`` if given (carrying the weights' too); returns the record as written."""
    record = {k: v for k, v in record.items() if k != "weights_sha256"}
    save_state_dict(model, folder / "model.safetensors", {_RECORD_DIGEST: _record_sha256(record)})
    record["weights_sha256"] = file_sha256(folder / "model.safetensors")
    write_json(folder / "pruning.json", record)
    if report is not None:
        write_json(folder / "report.json", {**report, "weights_sha256": record["weights_sha256"]})
    return record


def _record_sha256(record: dict[str, Any]) -> str:
    body = json_safe({k: v for k, v in record.items() if k != "weights_sha256"})  # as written to pruning.json
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check_unit(folder: Path, record: dict[str, Any]) -> None:
    """Refuse weights and a record that were not written together."""
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ChipPruneError(f"pruned folder {folder} has no model.safetensors")
    expected = record.get("weights_sha256")
    if expected is None:
        warnings.warn(f"{folder} was written by chipprune before 0.3: whether its files belong together cannot be checked")
        return
    if file_sha256(weights) != expected:
        raise ChipPruneError(f"{weights} is not the weights file {folder / 'pruning.json'} was written with (it comes from "
                             "another run, or was changed): prune again into an empty --out")
    try:
        with safe_open(str(weights), "pt") as f:
            stamped = (f.metadata() or {}).get(_RECORD_DIGEST)
    except (SafetensorError, OSError) as exc:
        raise ChipPruneError(f"cannot read {weights}: {exc}") from None
    if stamped != _record_sha256(record):
        raise ChipPruneError(f"{folder / 'pruning.json'} was changed after it was written (it no longer matches "
                             "model.safetensors): restore it, or prune again")


def read_pruned_record(folder: str | Path, model: str | None = None, spec: ModelSpec | None = None) -> tuple[dict[str, Any], ModelSpec]:
    """The pruning record of a pruned folder and its model's spec, checked before anything runs.

    A folder pruned from a ``package.module:function`` model names code that loading would import
    and run; it is loaded only when ``model`` repeats that name (the user vouches for the code), so a
    folder from elsewhere cannot run code by itself. Registry models need no ``model``. A model
    pruned through ``custom_spec`` is rebuilt from the ``spec`` given (with the same name).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ChipPruneError(f"no such folder: {folder}")
    record = read_json(folder / "pruning.json")
    where = folder / "pruning.json"
    if not isinstance(record, dict) or record.get("format") != PRUNED_FORMAT:
        raise ChipPruneError(f"{where} is not a chipprune pruning record ({PRUNED_FORMAT})")
    groups = record.get("groups")
    if not isinstance(record.get("model"), str) or not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("group"), str) and isinstance(g.get("removed"), list)
        and all(isinstance(i, int) for i in g["removed"]) for g in groups
    ):
        raise ChipPruneError(f"{where} is damaged: it needs 'model' and 'groups' (each with 'group' and a list of 'removed' channels)")
    if model is not None and model != record["model"]:
        raise ChipPruneError(f"{folder} holds a pruned '{record['model']}', not '{model}'")
    if spec is not None:
        if spec.name != record["model"]:
            raise ChipPruneError(f"{folder} holds a pruned '{record['model']}', not '{spec.name}'")
        return record, spec
    if record.get("family") == "custom_spec":
        raise ChipPruneError(f"{folder} holds '{record['model']}', pruned through custom_spec: load it with "
                             "load_pruned(folder, spec=custom_spec(..., factory=...)) and the same name")
    if is_user_factory(record["model"]) and model is None:
        raise ChipPruneError(
            f"{folder} was pruned from '{record['model']}', your own code: loading it imports and runs that function. "
            f"If you trust this folder, confirm with --model {record['model']} (Python: model='{record['model']}')"
        )
    return record, get_model_spec(record["model"], record.get("image_size"))


def load_pruned(folder: str | Path, device: torch.device | str = "cpu", *, model: str | None = None,
                spec: ModelSpec | None = None) -> nn.Module:
    """Rebuild a pruned model from its folder: fresh model, recorded removals replayed, weights loaded.

    Nothing is unpickled. For a ``package.module:function`` model, ``model`` must repeat that name:
    the function is imported and run (see ``read_pruned_record``). For a model pruned through
    ``custom_spec``, give that ``spec`` (with its factory).
    """
    return open_pruned(folder, device, model=model, spec=spec)[0]


def open_pruned(
    folder: str | Path, device: torch.device | str = "cpu", *, model: str | None = None, spec: ModelSpec | None = None
) -> tuple[nn.Module, dict[str, Any], ModelSpec]:
    """``load_pruned``, together with the folder's pruning record and its model's spec."""
    folder = Path(folder)
    record, spec = read_pruned_record(folder, model, spec)
    _check_unit(folder, record)
    net = spec.build(record.get("num_classes")).eval()
    dg = build_graph(net, spec.example_input(), spec.custom_pruners)
    modules = dict(net.named_modules())
    for g in record["groups"]:
        if g["group"] not in modules:
            raise ChipPruneError(f"{folder / 'pruning.json'} names layer '{g['group']}', which {spec.name} does not have")
        prune_group(dg, net, g["group"], g["removed"])
    # The folder's two files were written together; a mismatch means one of them was changed or damaged.
    load_weights(net, folder / "model.safetensors",
                 advice="pruning.json and model.safetensors do not belong together: was one of them replaced or damaged?")
    return net.to(device).eval(), record, spec


def read_report(folder: str | Path) -> dict[str, Any]:
    """A folder's report.json as written: empty when there is none, or when it belongs to other
    weights than the folder's ``pruning.json`` (a report left from another run)."""
    path = Path(folder) / "report.json"
    report = read_json(path) if path.is_file() else {}
    if not isinstance(report, dict):
        return {}
    record_path = Path(folder) / "pruning.json"
    record = read_json(record_path) if record_path.is_file() else {}
    weights = record.get("weights_sha256") if isinstance(record, dict) else None
    if weights is not None and report.get("weights_sha256") != weights:
        warnings.warn(f"{path} belongs to another run than the folder's weights; it is ignored")
        return {}
    return report
