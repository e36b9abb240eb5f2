"""Stream calibration batches through a model and score every channel of every group.

Feature maps are caught with hooks one batch at a time, reduced to per-channel score sums on the
spot, and dropped: nothing is kept across batches and nothing is written to disk. Hooks are removed
even when a batch fails.

How a group's score is formed: each feature map that shows the group's channels (the inputs of the
layers that consume them, which are post-activation maps) is scored on its own; its per-channel
score is divided by that map's mean nuclear norm so every map weighs the same, and the group's
score is the mean over its maps. A group with a single map keeps CHIP's ranking exactly.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .errors import ChipPruneError
from .graph import ChannelGroup
from .independence import channel_independence_sums

__all__ = ["CRITERIA", "GroupScores", "score_groups"]


# A criterion maps a batch of feature maps (N, C, ...) to (per-channel score sum, normaliser sum, N).
CRITERIA: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, int]]] = {
    "chip": channel_independence_sums,
}


@dataclass
class GroupScores:
    """Per-channel scores of one group (higher = more worth keeping), and how they were formed."""

    group: str
    scores: torch.Tensor  # (channels,), float64
    maps: list[str]  # the feature maps that were scored, "module:input" or "module:output"
    images: int


class _Accumulator:
    def __init__(self) -> None:
        self.score_sum: torch.Tensor | None = None
        self.norm_sum = 0.0
        self.images = 0
        self.spatial = False

    def add(self, score_sum: torch.Tensor, norm_sum: torch.Tensor, n: int) -> None:
        s = score_sum.detach().double().cpu()
        self.score_sum = s if self.score_sum is None else self.score_sum + s
        self.norm_sum += float(norm_sum)
        self.images += n

    def normalised_mean(self) -> torch.Tensor:
        assert self.score_sum is not None
        mean = self.score_sum / max(self.images, 1)
        norm = self.norm_sum / max(self.images, 1)
        return mean / norm if norm > 0 else mean


def score_groups(
    model: nn.Module,
    groups: Iterable[ChannelGroup],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    criterion: str = "chip",
    device: torch.device | str = "cpu",
    progress: bool = True,
    total: int | None = None,
) -> dict[str, GroupScores]:
    """Score all channels of ``groups`` on the images of ``batches`` with ``criterion``."""
    if criterion not in CRITERIA:
        raise ChipPruneError(f"unknown criterion '{criterion}'; choose from {', '.join(CRITERIA)}")
    score_fn = CRITERIA[criterion]
    groups = list(groups)
    modules = dict(model.named_modules())
    for g in groups:
        if not g.sources:
            raise ChipPruneError(
                f"group '{g.name}' has no feature map that a hook can see (no layer consumes its channels); "
                "list it as ignored or give it ratio 0"
            )

    # One accumulator per (module, kind) map; a map seen by several groups is scored once per batch.
    keys = sorted({(s.module_name, s.kind) for g in groups for s in g.sources})
    accumulators = {k: _Accumulator() for k in keys}
    aliases: dict[tuple[str, str], tuple[str, str]] = {}
    # Maps already scored in this batch, by identity. Weak references: a freed map's memory can be
    # reused by a later map, which must not be mistaken for the same tensor.
    seen_this_batch: dict[int, tuple[weakref.ref, tuple[str, str]]] = {}

    def record(key: tuple[str, str], tensor: torch.Tensor) -> None:
        ref, owner = seen_this_batch.get(id(tensor), (None, None))
        if ref is not None and ref() is tensor and owner != key:
            aliases[key] = owner  # the same tensor feeds two layers: count it once
            return
        seen_this_batch[id(tensor)] = (weakref.ref(tensor), key)
        try:
            accumulators[key].add(*score_fn(tensor))
            accumulators[key].spatial = tensor.dim() > 2 and tensor[0, 0].numel() > 1
        except ChipPruneError as exc:
            raise ChipPruneError(f"while scoring the map at {key[0]} ({key[1]}): {exc}") from None

    hooks = []
    for name, kind in keys:
        if name not in modules:
            raise ChipPruneError(f"no module named '{name}' in the model")
        if kind == "input":
            hooks.append(modules[name].register_forward_pre_hook(lambda _m, args, k=(name, kind): record(k, args[0])))
        else:
            hooks.append(modules[name].register_forward_hook(lambda _m, _a, out, k=(name, kind): record(k, out)))
    model.eval()
    images = 0
    try:
        with torch.inference_mode():
            for x, _ in tqdm(batches, desc=f"scoring ({criterion})", total=total, disable=not progress, unit="batch"):
                seen_this_batch.clear()
                model(x.to(device))
                images += x.shape[0]
    finally:
        for h in hooks:
            h.remove()
    if images == 0:
        raise ChipPruneError("no calibration images: the data split is empty")

    results = {}
    for g in groups:
        total_scores = torch.zeros(g.channels, dtype=torch.float64)
        counts = torch.zeros(g.channels, dtype=torch.float64)
        used: list[str] = []
        # A map fed to two layers is scored once, under the first layer that ran.
        sources = {(aliases.get((s.module_name, s.kind), (s.module_name, s.kind))): s for s in g.sources}
        sources = {k: s for k, s in sources.items() if accumulators[k].score_sum is not None}
        # Prefer spatial maps; a pooled vector (a classifier's input) says little about redundancy.
        if any(accumulators[k].spatial for k in sources):
            sources = {k: s for k, s in sources.items() if accumulators[k].spatial}
        if not sources:
            raise ChipPruneError(f"no feature map of group '{g.name}' was seen during the forward pass")
        for key, src in sources.items():
            per_map = accumulators[key].normalised_mean()
            total_scores.index_add_(0, src.root_channels, per_map[src.positions])
            counts.index_add_(0, src.root_channels, torch.ones(len(src.root_channels), dtype=torch.float64))
            used.append(f"{key[0]}:{key[1]}")
        results[g.name] = GroupScores(g.name, total_scores / counts.clamp_min(1), used, images)
    return results
