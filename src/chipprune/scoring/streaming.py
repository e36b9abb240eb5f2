"""Stream calibration batches through a model and score every channel of every group.

Feature maps are caught with hooks one batch at a time, reduced to per-channel score sums once the
batch's forward pass is done (or earlier, when the caught maps reach PENDING_BYTES), and dropped:
nothing is kept across batches and nothing is written to disk. Hooks are removed even when a batch
fails. (Computing scores in a worker thread during the forward pass was measured twice as slow on
CPU: the two compete for the same cores.)

How a group's score is formed: each feature map that shows the group's channels (the inputs of the
layers that consume them, which are post-activation maps) is scored on its own; its per-channel
score is divided by that map's mean nuclear norm so every map weighs the same, and the group's
score is the mean over its maps. A group with a single map keeps CHIP's ranking exactly.

Stability: images with even and odd positions in the calibration stream form two disjoint halves,
scored separately too; the Spearman correlation of the two halves' scores tells whether a group's
ranking is settled or needs more images.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..errors import ChipPruneError
from ..runtime import all_reduce_sum, batch_length, move_to, world
from ..surgery.groups import ChannelGroup

__all__ = ["PerImageScore", "GroupScores", "score_groups", "spearman", "UNSTABLE_BELOW"]

# How a map criterion scores: a batch of feature maps (N, C, ...) to per-image scores (N, C) and
# per-image normalisers (N,), both float64.
PerImageScore = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# Split-half rank correlation below which a group's ranking is reported as unstable.
UNSTABLE_BELOW = 0.8

# Caught maps wait (as copies: a later in-place op must not change them) until they add up to this
# many bytes or the batch ends, and are then scored together. Scoring between layers instead lets
# the forward pass's math threads, which spin for a few milliseconds after each parallel op,
# compete with the scoring threads.
PENDING_BYTES = 256 * 2**20


@dataclass
class GroupScores:
    """Per-channel scores of one group (higher = more worth keeping), and how they were formed."""

    group: str
    scores: torch.Tensor  # (channels,), float64
    maps: list[str]  # the feature maps that were scored, "module:input" or "module:output"
    images: int
    split_half_spearman: float  # rank correlation of the scores of two disjoint halves of the images


class _Accumulator:
    """Running sums of one feature map's scores, for the two halves of the images."""

    def __init__(self) -> None:
        self.score_sum: torch.Tensor | None = None  # (2, C)
        self.norm_sum = torch.zeros(2, dtype=torch.float64)
        self.images = torch.zeros(2, dtype=torch.float64)
        self.spatial = False

    def add(self, scores: torch.Tensor, norms: torch.Tensor, first_image: int) -> None:
        scores, norms = scores.double().cpu(), norms.double().cpu()
        half = (torch.arange(scores.shape[0]) + first_image) % 2
        sums = torch.zeros(2, scores.shape[1], dtype=torch.float64).index_add_(0, half, scores)
        self.score_sum = sums if self.score_sum is None else self.score_sum + sums
        self.norm_sum += torch.zeros(2, dtype=torch.float64).index_add_(0, half, norms)
        self.images += torch.bincount(half, minlength=2).double()

    def normalised_mean(self, halves: list[int]) -> torch.Tensor:
        assert self.score_sum is not None
        images = self.images[halves].sum().clamp_min(1)
        mean = self.score_sum[halves].sum(0) / images
        norm = self.norm_sum[halves].sum() / images
        return mean / norm if norm > 0 else mean


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation with average ranks for ties; 1.0 when either side is constant."""

    def ranks(v: torch.Tensor) -> torch.Tensor:
        order = torch.argsort(v, stable=True)
        r = torch.empty_like(v, dtype=torch.float64)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        _, inverse = torch.unique(v, return_inverse=True)
        mean_rank = torch.zeros(int(inverse.max()) + 1, dtype=torch.float64).index_add_(0, inverse, r)
        return mean_rank[inverse] / torch.bincount(inverse).double()[inverse]

    rx, ry = ranks(x.double()), ranks(y.double())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float((rx.square().sum() * ry.square().sum()).sqrt())
    return float((rx * ry).sum()) / denom if denom > 0 else 1.0


MapKey = tuple[str, str]  # (module name, "input" or "output"): one feature map a hook sees


class _MapCollector:
    """Catches the feature maps of one batch through hooks, scores them in bulk, and keeps running
    sums per map. A map seen by several groups is scored once per batch."""

    def __init__(self, groups: list[ChannelGroup], score_fn: PerImageScore) -> None:
        self.score_fn = score_fn
        self.keys: list[MapKey] = sorted({(s.module_name, s.kind) for g in groups for s in g.sources})
        self.channel_dims = {(s.module_name, s.kind): s.channel_dim for g in groups for s in g.sources}
        self.accumulators = {k: _Accumulator() for k in self.keys}
        self.aliases: dict[MapKey, MapKey] = {}  # a map that is the same tensor as another's: counted once
        # Maps already caught in this batch, by identity. Weak references: a freed map's memory can be
        # reused by a later map, which must not be mistaken for the same tensor.
        self.seen: dict[int, tuple[weakref.ref, MapKey]] = {}
        self.pending: list[tuple[MapKey, torch.Tensor]] = []
        self.images = 0

    def record(self, key: MapKey, tensor: torch.Tensor) -> None:
        ref, owner = self.seen.get(id(tensor), (None, None))
        if ref is not None and ref() is tensor and owner != key:
            self.aliases[key] = owner  # the same tensor feeds two layers: count it once
            return
        self.seen[id(tensor)] = (weakref.ref(tensor), key)
        if self.channel_dims[key] != 1:
            tensor = tensor.movedim(self.channel_dims[key], 1)  # a Linear sees channels last
        self.pending.append((key, tensor.clone()))
        if sum(t.numel() * t.element_size() for _, t in self.pending) >= PENDING_BYTES:
            self.score_pending()

    def score_pending(self) -> None:
        # All maps first, then the bookkeeping: even tiny torch ops between two maps wake the
        # forward pass's math threads, whose spinning then slows the scoring threads (1.3x).
        scored = []
        for key, tensor in self.pending:
            try:
                scored.append((key, tensor, self.score_fn(tensor)))
            except ChipPruneError as exc:
                raise ChipPruneError(f"while scoring the map at {key[0]} ({key[1]}): {exc}") from None
        self.pending.clear()
        for key, tensor, (scores, norms) in scored:
            self.accumulators[key].add(scores, norms, self.images)
            self.accumulators[key].spatial = tensor.dim() > 2 and tensor[0, 0].numel() > 1

    def end_batch(self, images: int) -> None:
        self.score_pending()
        self.images += images
        self.seen.clear()

    @contextmanager
    def hooked(self, model: nn.Module) -> Iterator[None]:
        """Hooks on every map's module for the duration, the model in eval mode; both undone after."""
        modules = dict(model.named_modules())
        missing = [name for name, _ in self.keys if name not in modules]
        if missing:
            raise ChipPruneError(f"no module named '{missing[0]}' in the model")
        hooks, was_training = [], model.training
        model.eval()
        try:
            for name, kind in self.keys:
                if kind == "input":
                    hooks.append(modules[name].register_forward_pre_hook(lambda _m, args, k=(name, kind): self.record(k, args[0])))
                else:
                    hooks.append(modules[name].register_forward_hook(lambda _m, _a, out, k=(name, kind): self.record(k, out)))
            yield
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)


def score_groups(
    model: nn.Module,
    groups: Iterable[ChannelGroup],
    batches: Iterable[tuple[Any, Any]],
    score_fn: PerImageScore,
    *,
    label: str = "chip",
    device: torch.device | str = "cpu",
    progress: bool = True,
    total: int | None = None,
) -> dict[str, GroupScores]:
    """Score all channels of ``groups`` on the images of ``batches`` ((model input, anything) pairs)
    with ``score_fn`` (``label`` names it in the progress bar)."""
    groups = list(groups)
    for g in groups:
        if not g.sources:
            raise ChipPruneError(
                f"group '{g.name}' has no feature map that a hook can see (no layer consumes its channels); "
                "list it as ignored or give it ratio 0"
            )
    collector = _MapCollector(groups, score_fn)
    with collector.hooked(model), torch.inference_mode():
        for x, _ in tqdm(batches, desc=f"scoring ({label})", total=total, disable=not progress, unit="batch"):
            model(move_to(x, device))
            collector.end_batch(batch_length(x))
    images = _reduce_across_processes(collector.accumulators, collector.images, device)
    if images == 0:
        raise ChipPruneError("no calibration images: the data split is empty")
    return {g.name: _combine(g, collector.accumulators, collector.aliases, images) for g in groups}


def _reduce_across_processes(accumulators: dict[MapKey, _Accumulator], images: int, device) -> int:
    """Under torchrun, sum every process's score sums (each scored its share of the images)."""
    if world()[1] == 1:
        return images
    for acc in accumulators.values():
        # Every process ran the same layers, so the same maps hold sums (aliases hold none).
        if acc.score_sum is None:
            continue
        packed = torch.cat([acc.score_sum.flatten(), acc.norm_sum, acc.images]).to(device)
        all_reduce_sum(packed)
        packed = packed.cpu()
        n = acc.score_sum.numel()
        acc.score_sum = packed[:n].view_as(acc.score_sum)
        acc.norm_sum, acc.images = packed[n : n + 2], packed[n + 2 :]
    return int(all_reduce_sum(torch.tensor([images], device=device)).item())


def _combine(
    group: ChannelGroup,
    accumulators: dict[MapKey, _Accumulator],
    aliases: dict[MapKey, MapKey],
    images: int,
) -> GroupScores:
    # A map fed to two layers is scored once, under the first layer that ran.
    sources = {aliases.get((s.module_name, s.kind), (s.module_name, s.kind)): s for s in group.sources}
    sources = {k: s for k, s in sources.items() if accumulators[k].score_sum is not None}
    # Prefer spatial maps; a pooled vector (a classifier's input) says little about redundancy.
    if any(accumulators[k].spatial for k in sources):
        sources = {k: s for k, s in sources.items() if accumulators[k].spatial}
    if not sources:
        raise ChipPruneError(f"no feature map of group '{group.name}' was seen during the forward pass")

    def mean_over_maps(halves: list[int]) -> torch.Tensor:
        total = torch.zeros(group.channels, dtype=torch.float64)
        counts = torch.zeros(group.channels, dtype=torch.float64)
        for key, src in sources.items():
            per_map = accumulators[key].normalised_mean(halves)
            total.index_add_(0, src.root_channels, per_map[src.positions])
            counts.index_add_(0, src.root_channels, torch.ones(len(src.root_channels), dtype=torch.float64))
        return total / counts.clamp_min(1)

    rho = spearman(mean_over_maps([0]), mean_over_maps([1])) if images > 1 else float("nan")
    return GroupScores(group.name, mean_over_maps([0, 1]), [f"{k[0]}:{k[1]}" for k in sources], images, rho)
