"""Plans from a sparsity: the paper's strings, one ratio for every group, or a plan file.

The paper writes ratios per *layer entry*, e.g. ResNet-56 ``[0.]+[0.15]*2+[0.4]*27``. Each entry
names a set of channels (the model's ModelSpec declares which layers, in ``paper_layout``); chipprune
maps entries onto coupled groups (see ``paper_entries``). Channels kept in a group =
``int(C * (1 - ratio))`` (at least 1), the highest-scoring ones.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from ..errors import ChipPruneError
from ..models.spec import ModelSpec
from ..surgery.groups import ChannelGroup
from .plan import Plan, keep_counts, size_after

__all__ = ["PlanEntry", "parse_sparsity", "paper_entries", "ratios_for", "plan_for_sparsity", "plan_from_patterns"]

_NUMBER = r"\s*((?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\s*"
_TERM = re.compile(r"\s*\[([^\[\]]*)\]\s*(?:\*\s*([0-9]+)\s*)?$")


def parse_sparsity(text: str) -> list[float]:
    """Parse ``[a]*n+[b, c]+...`` into a flat list of ratios, each in [0, 1).

    No ``eval``: a small grammar of bracketed number lists, optional ``*count``, joined by ``+``.
    """
    if not text or not text.strip():
        raise ChipPruneError("empty sparsity string; write e.g. '[0.]+[0.15]*2+[0.4]*27' or a single ratio '0.3'")
    ratios: list[float] = []
    for i, term in enumerate(text.split("+")):
        m = _TERM.match(term)
        if not m:
            raise ChipPruneError(
                f"cannot read term {i + 1} '{term.strip()}' of sparsity '{text}': each term is a "
                "bracketed list of ratios with an optional repeat count, e.g. [0.4]*27 or [0.1,0.2]"
            )
        items = m.group(1).split(",")
        if not all(re.fullmatch(_NUMBER, v) for v in items):
            raise ChipPruneError(f"term {i + 1} '{term.strip()}' of sparsity '{text}' holds something that is not a number")
        repeat = int(m.group(2)) if m.group(2) else 1
        ratios.extend([float(v) for v in items] * repeat)
    bad = [r for r in ratios if not 0.0 <= r < 1.0]
    if bad:
        raise ChipPruneError(f"sparsity ratios must lie in [0, 1); got {bad[0]} in '{text}'")
    return ratios


@dataclass(frozen=True)
class PlanEntry:
    """One entry of a paper string: a label for people and the group its channels belong to."""

    label: str
    group: str


def _group_of(groups: list[ChannelGroup], module: str) -> str:
    """The group that prunes ``module``; '' when none does (the layer, or one coupled with it, is ignored)."""
    return next((g.name for g in groups if module in g.members), "")


def paper_entries(spec: ModelSpec, groups: list[ChannelGroup], model: nn.Module) -> list[PlanEntry]:
    """The layer entries a paper sparsity string lists for ``spec``, in order, mapped to groups."""
    if spec.paper_layout is None:
        raise ChipPruneError(
            f"no paper sparsity layout for model '{spec.name}'; give one ratio for all layers instead, e.g. --sparsity 0.3"
        )
    entries = []
    for entry in spec.paper_layout(model):
        names = dict.fromkeys(filter(None, (_group_of(groups, m) for m in entry.modules)))
        entries.append(PlanEntry(entry.label, ",".join(names)))
    return entries


def _describe_layout(entries: list[PlanEntry]) -> str:
    """'1: stem; 2: stage-1 output; 4-12: layer1.* inner conv; ...' (runs of like entries collapsed)."""
    runs: list[tuple[int, int, str]] = []
    for i, e in enumerate(entries, start=1):
        pattern = re.sub(r"\.\d+", ".*", e.label)
        if runs and runs[-1][2] == pattern and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i, pattern)
        else:
            runs.append((i, i, pattern))
    return "; ".join(f"{a}: {entries[a - 1].label}" if a == b else f"{a}-{b}: {p}" for a, b, p in runs)


def _read_plan_file(path: Path) -> dict[str, float]:
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one clear message
        # YAML's messages span several lines (with a drawing of the spot): keep the first and the position.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ChipPruneError(f"cannot parse plan file {path}{where}: {reason}") from None
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
        raise ChipPruneError(f"plan file {path} must map layer names or patterns to ratios, e.g. {{\"layer1.*.conv1\": 0.4}}")
    return {str(k): float(v) for k, v in data.items()}


def plan_from_patterns(patterns: dict[str, float], groups: list[ChannelGroup], source: str = "plan") -> dict[str, float]:
    """{pattern: ratio} -> {group: ratio}. A pattern (fnmatch glob) selects every group with a matching
    member; later patterns override earlier ones; groups no pattern selects keep all channels."""
    plan = {g.name: 0.0 for g in groups}
    for pattern, ratio in patterns.items():
        if not 0.0 <= ratio < 1.0:
            raise ChipPruneError(f"{source}: ratio for '{pattern}' must lie in [0, 1); got {ratio}")
        hits = [g.name for g in groups if any(fnmatch.fnmatchcase(m, pattern) for m in g.members)]
        if not hits:
            examples = ", ".join(m for g in groups[:4] for m in g.members[:1])
            raise ChipPruneError(
                f"{source}: '{pattern}' matches no prunable layer (prunable layers are named like {examples}; "
                "'chipprune prune --dry-run -v' lists them)"
            )
        for name in hits:
            plan[name] = ratio
    return plan


def _coupling_notes(patterns: dict[str, float], groups: list[ChannelGroup]) -> list[str]:
    """Say when a pattern names only some of the layers that share channels: all of them follow it."""
    notes = []
    for pattern, ratio in patterns.items():
        for g in groups:
            matched = [m for m in g.members if fnmatch.fnmatchcase(m, pattern)]
            if matched and ratio > 0 and len(matched) < len(g.members):
                notes.append(
                    f"'{pattern}' shares its channels with {len(g.members) - len(matched)} more layer(s) "
                    f"(group '{g.name}'): all of them are pruned at {ratio}"
                )
    return notes


def ratios_for(
    sparsity: str, spec: ModelSpec, groups: list[ChannelGroup], model: nn.Module
) -> tuple[dict[str, float], list[str]]:
    """Turn a sparsity string into {group name: ratio} and a list of notes for the user.

    A single number (``0.3``) applies to every prunable group. A ``.json``/``.yaml`` file maps layer
    names or glob patterns to ratios (see ``plan_from_patterns``). A bracketed string follows the paper's
    layout for the model. Entries that name one coupled group must agree; a 0 entry beside a
    non-zero one is overridden (in the CIFAR ResNets the paper's stem entry is 0 while the stage-1
    entry prunes the same channels: the official code pruned them apart and misaligned the sum).
    """
    text = sparsity.strip()
    if not text:
        raise ChipPruneError("--sparsity is empty; give a ratio (0.3), a paper string or a plan file, or leave it out for the default")
    if re.fullmatch(r"\s*-" + _NUMBER, text):
        raise ChipPruneError(f"a pruning ratio must lie in [0, 1); got {text}")
    if text.endswith((".json", ".yaml", ".yml")):
        path = Path(text)
        if not path.is_file():
            raise ChipPruneError(f"plan file not found: {path}")
        patterns = _read_plan_file(path)
        return plan_from_patterns(patterns, groups, str(path)), _coupling_notes(patterns, groups)
    if re.fullmatch(_NUMBER, text):
        ratio = float(text)
        if not 0.0 <= ratio < 1.0:
            raise ChipPruneError(f"a pruning ratio must lie in [0, 1); got {ratio}")
        return {g.name: ratio for g in groups}, []
    return _ratios_from_paper_string(sparsity, spec, groups, model)


def _ratios_from_paper_string(
    sparsity: str, spec: ModelSpec, groups: list[ChannelGroup], model: nn.Module
) -> tuple[dict[str, float], list[str]]:
    """A paper string's entries, in the model's layout, as ratios per group (see ``ratios_for``)."""
    ratios = parse_sparsity(sparsity.strip())
    entries = paper_entries(spec, groups, model)
    if len(ratios) != len(entries):
        listing = _describe_layout(entries)
        raise ChipPruneError(
            f"sparsity '{sparsity}' has {len(ratios)} entries but {spec.name} needs {len(entries)} ({listing})"
        )
    plan: dict[str, float] = {g.name: 0.0 for g in groups}
    asked: dict[str, list[tuple[str, float]]] = {}
    notes = []
    for entry, ratio in zip(entries, ratios):
        if not entry.group:
            notes.append(f"{entry.label}: not pruned (ignored)" if ratio > 0 else "")
        for group in filter(None, entry.group.split(",")):
            asked.setdefault(group, []).append((entry.label, ratio))
    notes = [n for n in notes if n]
    for group, wishes in asked.items():
        nonzero = sorted({r for _, r in wishes if r > 0})
        if len(nonzero) > 1:
            raise ChipPruneError(
                f"entries {', '.join(l for l, _ in wishes)} prune the same coupled channels (group '{group}') "
                f"at different ratios {nonzero}; give them the same ratio"
            )
        plan[group] = nonzero[0] if nonzero else 0.0
        if nonzero and len(wishes) > 1 and any(r == 0 for _, r in wishes):
            zero = [l for l, r in wishes if r == 0]
            notes.append(f"{'; '.join(zero)}: coupled with a pruned entry, pruned at {nonzero[0]} with group '{group}'")
    return plan, notes


def plan_for_sparsity(
    model: nn.Module, spec: ModelSpec, groups: list[ChannelGroup], sparsity: str | None, round_to: int = 1
) -> Plan:
    """The plan for a sparsity string, one ratio or a plan file (None: the paper's setting for the model)."""
    sparsity = spec.paper_sparsity if sparsity is None else sparsity
    if sparsity is None:
        raise ChipPruneError(f"no default sparsity for '{spec.name}'; pass one, e.g. --sparsity 0.3")
    ratios, notes = ratios_for(sparsity, spec, groups, model)
    keep = keep_counts(groups, ratios, round_to)
    params, macs = size_after(model, spec, groups, keep)
    return Plan(ratios, keep, sparsity, round_to, notes, params, macs)
