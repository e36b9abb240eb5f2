"""Fine-tuning any model with the user's own loss: the task-agnostic counterpart of ``fit``.

``fit`` trains classifiers on chipprune's data paths with the paper's recipes; a detector or a
segmenter brings its own batches and its own loss, and gets a plain loop: SGD with momentum, a
cosine learning rate over all steps (PyTorch's scheduler), a progress bar, and a stop at the first
loss that is not finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..errors import ChipPruneError
from ..runtime import move_to

__all__ = ["finetune_module"]

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def finetune_module(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn,
    *,
    epochs: int = 1,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> list[float]:
    """Fine-tune ``model`` in place: for each batch, ``loss_fn(model, batch)`` (the batch moved to
    ``device``; the model in training mode) is minimised. ``batches`` is read once per epoch (a list
    or a DataLoader). Returns the mean loss of each epoch."""
    if epochs < 1:
        raise ChipPruneError(f"epochs must be at least 1, got {epochs}")
    steps_per_epoch = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    if steps_per_epoch == 0:
        raise ChipPruneError("no training batches to fine-tune on")
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    # Steps unknown for an iterable without a length: the rate then stays constant.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch) if steps_per_epoch else None
    means = []
    try:
        for epoch in range(epochs):
            total, steps = 0.0, 0
            for batch in tqdm(batches, desc=f"fine-tuning, epoch {epoch + 1}/{epochs}", disable=not progress, unit="batch", leave=False):
                loss = loss_fn(model, move_to(batch, device))
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise ChipPruneError(f"loss_fn(model, batch) must return a scalar tensor, it returned {type(loss).__name__}")
                value = float(loss.detach())  # one sync per step: this loop is for small budgets
                if not math.isfinite(value):
                    raise ChipPruneError(f"the loss became {value} at step {steps + 1} of epoch {epoch + 1}: lower lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                total, steps = total + value, steps + 1
            if steps == 0:
                raise ChipPruneError("no training batches to fine-tune on")
            means.append(total / steps)
    finally:
        model.eval()
    return means
