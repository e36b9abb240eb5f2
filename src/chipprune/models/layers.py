"""chipprune's own layer types, and the Torch-Pruning pruners that teach the dependency graph how to
prune them. ``LAYER_PRUNERS`` is every ModelSpec's default, so a user's model built from these layers
prunes as chipprune's models do."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

__all__ = ["PadShortcut", "PadShortcutPruner", "LAYER_PRUNERS"]


def _pad_gather(x: torch.Tensor, gather_index: torch.Tensor, stride: int) -> torch.Tensor:
    x = x[:, :, ::stride, ::stride]
    # One gather from the input plus a zero channel: exportable and free of in-place writes.
    padded = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2], x.shape[3])], dim=1)
    return padded.index_select(1, gather_index)


class _PadGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, gather_index: torch.Tensor, stride: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(gather_index)
        ctx.stride, ctx.in_shape = stride, x.shape
        return _pad_gather(x, gather_index, stride)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (gather_index,) = ctx.saved_tensors
        n, c, h, w = ctx.in_shape
        sub = grad_out.new_zeros(n, c + 1, grad_out.shape[2], grad_out.shape[3])
        sub.index_add_(1, gather_index, grad_out)
        grad_x = grad_out.new_zeros(n, c, h, w)
        grad_x[:, :, :: ctx.stride, :: ctx.stride] = sub[:, :c]
        return grad_x, None, None


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride``, then place input channels at fixed output slots.

    Unpruned, input channel ``i`` lands on output channel ``i + pad`` and the other slots are zero,
    exactly ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))``. Pruning keeps this mapping
    explicit (``dst_index[i]`` is where input channel ``i`` goes, or -1 if its slot was removed),
    so the channels of two residual stages stay aligned however each stage is pruned.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        pad = (out_channels - in_channels) // 2
        self.stride = stride
        self.out_channels = out_channels
        self.register_buffer("dst_index", torch.arange(in_channels) + pad, persistent=False)

    @property
    def in_channels(self) -> int:
        return int(self.dst_index.numel())

    def _gather_index(self) -> torch.Tensor:
        # For each output slot, the input channel that feeds it, or `in_channels` (a zero channel).
        src = torch.full((self.out_channels,), self.in_channels, dtype=torch.long, device=self.dst_index.device)
        live = self.dst_index >= 0
        src[self.dst_index[live]] = torch.arange(self.in_channels, device=src.device)[live]
        return src

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            # One autograd node from input to output, so Torch-Pruning's tracer sees this module as
            # a single layer (it would otherwise follow the cat/index ops inside).
            return _PadGather.apply(x, self._gather_index(), self.stride)
        return _pad_gather(x, self._gather_index(), self.stride)

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, stride={self.stride}"


class PadShortcutPruner(tp.pruner.BasePruningFunc):
    """Teaches Torch-Pruning the option-A shortcut: input and output channels are pruned separately
    (they belong to two different residual stages), and the input->output slot map stays exact."""

    TARGET_MODULES = PadShortcut

    def prune_out_channels(self, layer: PadShortcut, idxs: Sequence[int]) -> PadShortcut:
        removed = torch.as_tensor(sorted(set(int(i) for i in idxs)), dtype=torch.long)
        dst = layer.dst_index.clone()
        live = dst >= 0
        hit = torch.isin(dst, removed.to(dst.device)) & live
        # Each surviving slot moves down by the number of removed slots below it.
        shift = torch.searchsorted(removed.to(dst.device), dst.clamp_min(0))
        dst = torch.where(live, dst - shift, dst)
        dst[hit] = -1
        layer.dst_index = dst
        layer.out_channels -= len(removed)
        return layer

    def prune_in_channels(self, layer: PadShortcut, idxs: Sequence[int]) -> PadShortcut:
        removed = {int(j) for j in idxs}
        keep = [i for i in range(layer.in_channels) if i not in removed]
        layer.dst_index = layer.dst_index[torch.as_tensor(keep, dtype=torch.long, device=layer.dst_index.device)]
        return layer

    def get_out_channels(self, layer: PadShortcut) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: PadShortcut) -> int:
        return layer.in_channels


LAYER_PRUNERS = {PadShortcut: PadShortcutPruner()}
