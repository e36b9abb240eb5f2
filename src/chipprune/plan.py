"""Pruning plans: which ratio each channel group gets, from the paper's sparsity strings or one ratio.

The paper writes ratios per *layer entry*, e.g. ResNet-56 ``[0.]+[0.15]*2+[0.4]*27``. Each entry
names a set of channels; chipprune maps entries onto coupled groups (see ``paper_entries``).
Channels kept in a group = ``int(C * (1 - ratio))`` (at least 1), the highest-scoring ones.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ChipPruneError
from .graph import ChannelGroup, FeatureSource
from .models.registry import ModelSpec

__all__ = [
    "PAPER_SPARSITY",
    "PlanEntry",
    "parse_sparsity",
    "paper_entries",
    "make_plan",
    "channels_to_keep",
    "select_top",
    "paper_feature_sources",
    "plan_from_patterns",
]

# The paper's settings, used as defaults.
PAPER_SPARSITY = {
    "cifar_resnet56": "[0.]+[0.15]*2+[0.4]*27",
    "cifar_resnet110": "[0.]+[0.22]*2+[0.35]*18+[0.45]*36",
    "cifar_vgg16_bn": "[0.21]*7+[0.75]*5",
    "resnet50": "[0.]+[0.1]*3+[0.35]*16",
}

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


def paper_entries(spec: ModelSpec, groups: list[ChannelGroup], model: torch.nn.Module) -> list[PlanEntry]:
    """The layer entries a paper sparsity string lists for ``spec``, in order, mapped to groups."""
    names = [n for n, _ in model.named_modules()]
    if spec.family == "cifar_resnet":
        n_blocks = len([n for n in names if re.fullmatch(r"layer1\.\d+", n)])
        entries = [
            PlanEntry("stem conv1 (shares its channels with the stage-1 stream)", _group_of(groups, "conv1")),
            PlanEntry("stage-1 output (residual stream)", _group_of(groups, "layer1.0.conv2")),
            PlanEntry("stage-2 output (residual stream)", _group_of(groups, "layer2.0.conv2")),
        ]
        for s in (1, 2, 3):
            for b in range(n_blocks):
                entries.append(PlanEntry(f"layer{s}.{b} inner conv", _group_of(groups, f"layer{s}.{b}.conv1")))
        return entries
    if spec.family == "cifar_vgg":
        convs = [n for n in names if re.fullmatch(r"features\.conv\d+", n)]
        return [PlanEntry(f"{c} (conv {i + 1})", _group_of(groups, c)) for i, c in enumerate(convs[:-1])]
    if spec.family == "torchvision" and spec.name.startswith(("resnet", "resnext", "wide_resnet")):
        stages = sorted({n.split(".")[0] for n in names if re.fullmatch(r"layer\d+", n)})
        blocks = [n for n in names if re.fullmatch(r"layer\d+\.\d+", n)]
        last_conv = "conv3" if any(n.endswith(".conv3") for n in names) else "conv2"
        entries = [PlanEntry("stem (conv1 + max-pool)", _group_of(groups, "conv1"))]
        for st in stages[:-1]:
            entries.append(PlanEntry(f"{st} output (residual stream)", _group_of(groups, f"{st}.0.{last_conv}")))
        inner = ["conv1", "conv2"] if last_conv == "conv3" else ["conv1"]
        for b in blocks:
            entries.append(PlanEntry(f"{b} inner convs", ",".join(filter(None, (_group_of(groups, f"{b}.{c}") for c in inner)))))
        return entries
    raise ChipPruneError(
        f"no paper sparsity layout for model '{spec.name}'; give one ratio for all layers instead, e.g. --sparsity 0.3"
    )


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
        raise ChipPruneError(f"cannot parse plan file {path}: {exc}") from None
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


def make_plan(
    sparsity: str, spec: ModelSpec, groups: list[ChannelGroup], model: torch.nn.Module
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
    ratios = parse_sparsity(text)
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


def channels_to_keep(channels: int, ratio: float, round_to: int = 1) -> int:
    """The paper's rule: keep ``int(C * (1 - ratio))`` channels, and never fewer than one.

    With ``round_to`` > 1 the count is rounded to the nearest multiple (at least one multiple, at
    most C), so kernels see hardware-friendly widths; a ratio of 0 keeps every channel.
    """
    if ratio <= 0:
        return channels
    keep = max(1, int(channels * (1.0 - ratio)))
    if round_to > 1 and channels > round_to:
        keep = min(channels, max(round_to, round_to * round(keep / round_to)))
    return keep


def select_top(scores: torch.Tensor, keep: int, channel_groups: int = 1) -> tuple[list[int], list[int]]:
    """The ``keep`` highest-scoring indices and the rest, both sorted; ties keep the lower index.

    With ``channel_groups`` > 1 (grouped convolutions), the channels form that many equal blocks:
    scores are averaged over the blocks, ``keep / channel_groups`` positions are chosen once and
    kept in every block.
    """
    n = scores.numel()
    if channel_groups > 1 and n % channel_groups == 0:
        block = n // channel_groups
        keep_block, _ = select_top(scores.double().view(channel_groups, block).mean(0), keep // channel_groups)
        kept = sorted(g * block + i for g in range(channel_groups) for i in keep_block)
        return kept, sorted(set(range(n)) - set(kept))
    # Stable sort on the negated scores: equal scores keep their original order.
    order = torch.sort(-scores.double(), stable=True).indices
    return sorted(order[:keep].tolist()), sorted(order[keep:].tolist())


def paper_feature_sources(spec: ModelSpec, groups: list[ChannelGroup]) -> None:
    """Point groups at the maps the official code scores where they differ from the consumers' inputs.

    VGG: the official code scores each conv's ReLU output; four convs feed a max-pool, so the next
    conv's input is the pooled map. Other paper models already match (consumers' inputs are the
    ReLU outputs the official code hooks).
    """
    if spec.family != "cifar_vgg":
        return
    for g in groups:
        m = re.fullmatch(r"features\.conv(\d+)", g.name)
        if m:
            idx = torch.arange(g.channels)
            g.sources = [FeatureSource(f"features.relu{m.group(1)}", "output", idx, idx)]
