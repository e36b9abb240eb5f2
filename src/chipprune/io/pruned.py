"""The pruned-folder format: ``model.safetensors`` (weights), ``pruning.json`` (how to rebuild the
architecture: the model's name and the channels each group lost) and ``report.json``.

Loading builds the named model afresh, replays the recorded removals and loads the weights:
nothing is unpickled, and no code runs that the user did not name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .._version import __version__
from ..errors import ChipPruneError
from ..models.registry import get_model_spec
from ..models.spec import ModelSpec
from ..models.user import is_user_factory
from ..runtime import device_of
from ..surgery.apply import GroupRemoval, prune_group
from ..surgery.groups import build_graph, classifier_outputs, example_input, find_classifier
from .atomic import read_json, save_state_dict, write_json
from .weights import load_weights

__all__ = ["PRUNED_FORMAT", "PruneResult", "pruning_record", "save_pruned", "read_pruned_record", "open_pruned", "load_pruned", "read_report"]

PRUNED_FORMAT = "chipprune-pruned/1"


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
    classifier: str | None = None,
    round_to: int = 1,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The ``pruning.json`` that lets ``load_pruned`` rebuild ``model``: its name, input and the
    channels each group lost (no removals: the model as built)."""
    classifier = classifier or find_classifier(model.eval(), example_input(spec, device_of(model)))
    return {
        "format": PRUNED_FORMAT,
        "chipprune_version": __version__,
        "model": spec.name,
        "num_classes": classifier_outputs(model, classifier),
        "image_size": spec.image_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "classifier": classifier,
        "criterion": criterion,
        "sparsity": sparsity,
        "round_to": round_to,
        "notes": list(notes or []),
        "groups": [asdict(r) for r in removals],
    }


def save_pruned(result: PruneResult, folder: str | Path) -> Path:
    """Write ``model.safetensors``, ``pruning.json`` and ``report.json`` into ``folder`` (atomically each)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # The report goes first and last: its presence means the folder's files belong together, so a
    # previous run's report must not outlive an interruption between the two other files.
    (folder / "report.json").unlink(missing_ok=True)
    save_state_dict(result.model, folder / "model.safetensors")
    write_json(folder / "pruning.json", result.record)
    write_json(folder / "report.json", result.report.to_json())
    return folder


def read_pruned_record(folder: str | Path, model: str | None = None) -> tuple[dict[str, Any], ModelSpec]:
    """The pruning record of a pruned folder and its model's spec, checked before anything runs.

    A folder pruned from a ``package.module:function`` model names code that loading would import
    and run; it is loaded only when ``model`` repeats that name (the user vouches for the code), so a
    folder from elsewhere cannot run code by itself. Registry models need no ``model``.
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
    if is_user_factory(record["model"]) and model is None:
        raise ChipPruneError(
            f"{folder} was pruned from '{record['model']}', your own code: loading it imports and runs that function. "
            f"If you trust this folder, confirm with --model {record['model']} (Python: model='{record['model']}')"
        )
    return record, get_model_spec(record["model"], record.get("image_size"))


def load_pruned(folder: str | Path, device: torch.device | str = "cpu", *, model: str | None = None) -> nn.Module:
    """Rebuild a pruned model from its folder: fresh model, recorded removals replayed, weights loaded.

    Nothing is unpickled. For a ``package.module:function`` model, ``model`` must repeat that name:
    the function is imported and run (see ``read_pruned_record``).
    """
    return open_pruned(folder, device, model=model)[0]


def open_pruned(
    folder: str | Path, device: torch.device | str = "cpu", *, model: str | None = None
) -> tuple[nn.Module, dict[str, Any], ModelSpec]:
    """``load_pruned``, together with the folder's pruning record and its model's spec."""
    folder = Path(folder)
    record, spec = read_pruned_record(folder, model)
    net = spec.build(record.get("num_classes")).eval()
    dg = build_graph(net, example_input(spec), spec.custom_pruners)
    modules = dict(net.named_modules())
    for g in record["groups"]:
        if g["group"] not in modules:
            raise ChipPruneError(f"{folder / 'pruning.json'} names layer '{g['group']}', which {spec.name} does not have")
        prune_group(dg, net, g["group"], g["removed"])
    if not (folder / "model.safetensors").is_file():
        raise ChipPruneError(f"pruned folder {folder} has no model.safetensors")
    # The folder's two files were written together; a mismatch means one of them was changed or damaged.
    load_weights(net, folder / "model.safetensors",
                 advice="pruning.json and model.safetensors do not belong together: was one of them replaced or damaged?")
    return net.to(device).eval(), record, spec


def read_report(folder: str | Path) -> dict[str, Any]:
    """A folder's report.json as written (empty when there is none)."""
    path = Path(folder) / "report.json"
    report = read_json(path) if path.is_file() else {}
    return report if isinstance(report, dict) else {}
