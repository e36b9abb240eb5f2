"""A pilot's folder: what it was run with, the scores and the finished levels, so that a rerun
resumes and never mixes results of other settings."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file

from ..errors import ChipPruneError
from ..io.atomic import read_json, save_tensors, write_json
from ..results import PilotLevel
from ..scoring.streaming import GroupScores
from ..surgery.groups import ChannelGroup

__all__ = ["PilotFolder", "weights_digest"]


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the model's state: a pilot's results belong to these weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class PilotFolder:
    """``settings.json``, ``scores.safetensors`` and ``levels/macs-*.json`` of one pilot."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        (self.out / "levels").mkdir(parents=True, exist_ok=True)

    def claim(self, settings: dict[str, Any]) -> None:
        """Record what this pilot's results depend on; refuse a folder holding results of other
        settings, which a resumed run would otherwise mix with its own."""
        settings = json.loads(json.dumps(settings))
        path = self.out / "settings.json"
        if path.is_file():
            saved = read_json(path)
            if not isinstance(saved, dict):
                raise ChipPruneError(f"{path} is damaged; remove the folder {self.out} (or choose another --out) to start over")
            changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v]
            if changed:
                shown = [c if not c.startswith("weights_sha256") else "the model's weights" for c in changed]
                raise ChipPruneError(
                    f"{self.out} holds pilot results for other settings ({'; '.join(shown)}); "
                    "choose another --out, or remove the folder to start over"
                )
        elif (self.out / "scores.safetensors").is_file() or any((self.out / "levels").glob("*.json")):
            raise ChipPruneError(
                f"{self.out} holds pilot results without a record of their settings; choose another --out, or remove the folder"
            )
        write_json(path, settings)

    def scores(self, groups: list[ChannelGroup]) -> dict[str, GroupScores] | None:
        """The scores a previous run of this pilot saved, or None (none, or unreadable: scored again)."""
        path = self.out / "scores.safetensors"
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
        except Exception:  # noqa: BLE001 - a damaged cache, whatever the damage, is recomputed
            return None
        if set(tensors) != {g.name for g in groups}:
            return None
        return {k: GroupScores(k, v.double(), [], 0, float("nan")) for k, v in tensors.items()}

    def save_scores(self, scores: dict[str, GroupScores]) -> None:
        save_tensors({k: v.scores for k, v in scores.items()}, self.out / "scores.safetensors")

    def _level_path(self, target: float) -> Path:
        return self.out / "levels" / f"macs-{target:.3f}.json"

    def level(self, target: float) -> PilotLevel | None:
        """A level a previous run finished, or None (none, unreadable, or of an older form: measured again)."""
        path = self._level_path(target)
        try:
            return PilotLevel.from_json(read_json(path)) if path.is_file() else None
        except (ChipPruneError, TypeError, KeyError):
            return None

    def save_level(self, level: PilotLevel) -> None:
        write_json(self._level_path(level.target), asdict(level))  # a finished level survives an interruption

    def finetune_dir(self, target: float) -> Path:
        return self.out / "levels" / f"macs-{target:.3f}-finetune"
