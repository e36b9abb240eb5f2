"""Model size and quality: parameters, multiply-accumulates, accuracy; BatchNorm re-estimation.

MACs are counted with PyTorch's own ``FlopCounterMode`` (FLOPs / 2), which counts convolutions and
matrix multiplies: the convention of the CHIP paper's baseline figures (conv + linear MACs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from ..errors import ChipPruneError
from ..runtime import all_reduce_sum, autocast, batch_length, device_of, move_to

__all__ = ["call_evaluate", "count_params", "count_macs", "check_labels", "evaluate", "correct_flags", "recalibrate_batchnorm"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def check_labels(classes: int, labels: torch.Tensor) -> None:
    """Refuse labels a model with ``classes`` outputs cannot predict (data with more classes than the model)."""
    top = int(labels.max()) if labels.numel() else -1
    if top >= classes:
        raise ChipPruneError(
            f"the data has class label {top}, but the model predicts {classes} classes (0-{classes - 1}); "
            "give --num-classes (and weights trained for them) or data with the model's classes"
        )


def count_macs(model: nn.Module, inputs: int | Any, channels: int = 3) -> int:
    """Multiply-accumulates of one forward pass on ``inputs``: the model's input (``ModelSpec.example_input``),
    or an image size (one blank ``inputs`` x ``inputs`` image)."""
    device = device_of(model)
    if isinstance(inputs, int):
        inputs = torch.zeros(1, channels, inputs, inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(move_to(inputs, device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)


def evaluate(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device | str = "cpu",
    *, progress: bool = False, desc: str = "evaluating", amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent, and the number of images.

    Under torchrun the counts are summed over the processes (each evaluates its share).
    ``amp_dtype`` runs the model under autocast on CUDA.
    """
    model.eval()
    device = torch.device(device)
    counts = torch.zeros(4, dtype=torch.float64)  # top-1 right, top-5 right, images, images with non-finite logits
    with torch.inference_mode(), autocast(device, amp_dtype):
        for x, y in tqdm(batches, desc=desc, disable=not progress, unit="batch", leave=False):
            logits = model(x.to(device)).float()
            check_labels(logits.shape[1], y)  # y still on the CPU: no device sync
            y = y.to(device)
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            counts += torch.tensor(
                [(top[:, 0] == y).sum().item(), (top == y[:, None]).any(dim=1).sum().item(), y.numel(),
                 (~torch.isfinite(logits).all(dim=1)).sum().item()], dtype=torch.float64
            )
    correct1, correct5, total, broken = all_reduce_sum(counts.to(device)).cpu().tolist()
    if broken:  # an argmax over NaN or inf looks like an accuracy, and means nothing
        raise ChipPruneError(f"the model gave infinite or NaN outputs for {int(broken)} of {int(total)} test images: its weights or "
                             "the data hold values out of range (a diverged training, damaged weights, or images not scaled)")
    if total == 0:
        return {"top1": float("nan"), "top5": float("nan"), "images": 0}
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "images": int(total)}


def call_evaluate(evaluate: Callable[[nn.Module], float], model: nn.Module) -> float:
    """A user's own measure of ``model`` (in eval mode, without gradients; its mode restored after),
    checked to be a number."""
    was_training = model.training
    try:
        with torch.no_grad():
            value = evaluate(model.eval())
    finally:
        model.train(was_training)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ChipPruneError(f"evaluate(model) must return a number, it returned {type(value).__name__}") from None
    if value != value:
        raise ChipPruneError("evaluate(model) returned NaN: the model's outputs or the metric are broken")
    return value


def correct_flags(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Per test image, whether the top-1 prediction is right (bool, in data order): for paired comparisons."""
    model.eval()
    flags = []
    with torch.inference_mode():
        for x, y in batches:
            logits = model(x.to(device))
            check_labels(logits.shape[1], y)
            flags.append(logits.argmax(1).cpu() == y)
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[tuple[Any, Any]], device: torch.device | str = "cpu") -> int:
    """Re-estimate BatchNorm running statistics on ``batches`` ((model input, anything) pairs; no
    weights change). Returns the samples used.

    Pruning removes channels that fed later layers, so their input statistics shift; a cumulative
    average over a few batches repairs the stored statistics. Only the BatchNorm layers are put in
    training mode: the model runs as in inference otherwise (dropout off, a detector's inference path).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all batches seen
        m.train()
    images = 0
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(move_to(x, device))
                images += batch_length(x)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.eval()
    return images
