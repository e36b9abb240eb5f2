"""CHIP on your own task: a small YOLO-style detector, pruned, measured with its own metric,
fine-tuned with its own loss, saved, reloaded and swept, through chipprune's Python API alone.

    python examples/own_detector.py            # about 10 minutes on 2 CPU cores (docs/ANY_MODEL.md)
    python examples/own_detector.py --quick    # the same steps, tiny, for a smoke test

The task is synthetic so that the example runs anywhere without data: find the one coloured
square in a noisy 64x64 image. The detector predicts, for each cell of an 8x8 grid, an objectness
logit and a box (centre offset in the cell, width and height); its quality is the share of test
images whose best box overlaps the true one with IoU > 0.5. Replace the model, the batches, the
loss and the metric with yours: chipprune needs nothing else.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import chipprune

GRID, SIZE = 8, 64


def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(channels, channels), nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class TinyYolo(nn.Module):
    """A backbone of residual stages, a neck that upsamples the deepest map and concatenates it with
    the one before (as YOLO's necks do), and a 1x1 head: 5 numbers per grid cell."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = conv(3, width)
        self.stage1 = nn.Sequential(conv(width, width, 2), Residual(width))  # 32x32
        self.stage2 = nn.Sequential(conv(width, 2 * width, 2), Residual(2 * width))  # 16x16
        self.stage3 = nn.Sequential(conv(2 * width, 4 * width, 2), Residual(4 * width))  # 8x8
        self.stage4 = nn.Sequential(conv(4 * width, 4 * width, 2), Residual(4 * width))  # 4x4
        self.neck = conv(8 * width, 2 * width)
        self.head = nn.Conv2d(2 * width, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c3 = self.stage3(self.stage2(self.stage1(self.stem(x))))
        c4 = F.interpolate(self.stage4(c3), scale_factor=2.0, mode="nearest")
        return self.head(self.neck(torch.cat([c3, c4], dim=1)))  # (N, 5, 8, 8)


def make_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy images, each with one coloured square; boxes as (x0, y0, x1, y1) in pixels."""
    g = torch.Generator().manual_seed(seed)
    images = 0.5 + 0.15 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    side = torch.randint(10, 28, (n,), generator=g)
    x0 = (torch.rand(n, generator=g) * (SIZE - side)).long()
    y0 = (torch.rand(n, generator=g) * (SIZE - side)).long()
    colour = torch.rand(n, 3, generator=g)
    for i in range(n):
        images[i, :, y0[i] : y0[i] + side[i], x0[i] : x0[i] + side[i]] = colour[i, :, None, None] + 0.05
    boxes = torch.stack([x0, y0, x0 + side, y0 + side], dim=1).float()
    return images.clamp(0, 1), boxes


def decode(out: torch.Tensor) -> torch.Tensor:
    """The best box of each image (x0, y0, x1, y1), from the cell with the highest objectness."""
    n = out.shape[0]
    best = out[:, 0].flatten(1).argmax(1)
    row, col = best // GRID, best % GRID
    cell = out[torch.arange(n), 1:, row, col]
    cx, cy = (col + cell[:, 0].sigmoid()) * (SIZE / GRID), (row + cell[:, 1].sigmoid()) * (SIZE / GRID)
    w, h = cell[:, 2].exp() * 16, cell[:, 3].exp() * 16
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)


def detection_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Objectness (binary cross-entropy over all cells) plus the box of the cell holding the centre."""
    images, boxes = batch
    out = model(images)
    n = images.shape[0]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    col, row = (cx / (SIZE / GRID)).long().clamp(0, GRID - 1), (cy / (SIZE / GRID)).long().clamp(0, GRID - 1)
    target = torch.zeros(n, GRID, GRID)
    target[torch.arange(n), row, col] = 1.0
    objectness = F.binary_cross_entropy_with_logits(out[:, 0], target)
    cell = out[torch.arange(n), 1:, row, col]
    offsets = torch.stack([cx / (SIZE / GRID) - col, cy / (SIZE / GRID) - row], dim=1)
    sizes = torch.stack([(boxes[:, 2] - boxes[:, 0]) / 16, (boxes[:, 3] - boxes[:, 1]) / 16], dim=1).log()
    box = F.l1_loss(cell[:, :2].sigmoid(), offsets) + F.l1_loss(cell[:, 2:], sizes)
    return objectness + box


def hit_rate(model: nn.Module, images: torch.Tensor, boxes: torch.Tensor) -> float:
    """Share of images whose best box has IoU > 0.5 with the true one: this task's metric."""
    with torch.no_grad():
        predicted = decode(model(images))
    inter = (torch.min(predicted[:, 2:], boxes[:, 2:]) - torch.max(predicted[:, :2], boxes[:, :2])).clamp(min=0).prod(1)
    union = (predicted[:, 2:] - predicted[:, :2]).prod(1) + (boxes[:, 2:] - boxes[:, :2]).prod(1) - inter
    return float((inter / union > 0.5).float().mean())


def batches_of(images: torch.Tensor, boxes: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images[i : i + size], boxes[i : i + size]) for i in range(0, len(images), size)]


def main(quick: bool = False) -> dict[str, object]:
    torch.manual_seed(0)
    n_train, n_test, epochs = (128, 32, 1) if quick else (2048, 512, 4)
    train = batches_of(*make_images(n_train, seed=1), size=64)
    test_images, test_boxes = make_images(n_test, seed=2)
    evaluate = lambda m: hit_rate(m, test_images, test_boxes)  # noqa: E731 - the one line a user writes

    t0 = time.perf_counter()
    model = TinyYolo()
    chipprune.finetune_module(model, train, detection_loss, epochs=epochs, lr=0.05, progress=False)  # trained from scratch here
    print(f"trained TinyYolo for {epochs} epochs on {n_train} images ({time.perf_counter() - t0:.0f} s): "
          f"hit rate {evaluate(model):.3f} on {n_test} test images")

    # 1. Describe the model to chipprune: a name, one input as the model takes it, and how to build it.
    spec = chipprune.custom_spec("tiny-yolo", torch.zeros(1, 3, SIZE, SIZE), factory=TinyYolo, task="detection")
    # 2. Calibration: a few batches of inputs alone (no labels), as model(...) takes them.
    calibration = [images for images, _ in train[:5]]
    original = {k: v.clone() for k, v in model.state_dict().items()}
    # 3. Prune: CHIP scores, 40% of the channels of every group, the metric before and after.
    result = chipprune.prune(model, spec, "0.4", calibration=calibration, evaluate=evaluate, progress=False)
    r = result.report
    print(f"pruned: params {r.params_before:,} -> {r.params_after:,}, MACs {r.macs_before:,} -> {r.macs_after:,}; "
          f"hit rate {r.metric_before:.3f} -> {r.metric_after:.3f} (BatchNorm re-estimated, no fine-tuning)")
    # 4. Fine-tune with the task's own loss.
    losses = chipprune.finetune_module(result.model, train, detection_loss, epochs=max(1, epochs // 3), lr=0.01, progress=False)
    tuned = evaluate(result.model)
    print(f"fine-tuned {len(losses)} epoch(s) (loss {losses[0]:.3f} -> {losses[-1]:.3f}): hit rate {tuned:.3f}")
    # 5. Save without pickle, load back (the spec's factory rebuilds the architecture), export to ONNX.
    with tempfile.TemporaryDirectory() as tmp:
        chipprune.save_pruned(result, f"{tmp}/tiny-yolo")
        loaded = chipprune.load_pruned(f"{tmp}/tiny-yolo", spec=spec)
        same = torch.equal(loaded(test_images[:8]), result.model.eval()(test_images[:8]))
        from chipprune.io.onnx import export_onnx
        onnx_diff = export_onnx(loaded, spec, f"{tmp}/tiny-yolo.onnx")
    print(f"saved and reloaded: outputs identical: {same}; ONNX Runtime agrees to {onnx_diff:.1e}")
    # 6. The pilot for any model: where does the metric start to fall? (each level: prune a copy, a short fine-tune)
    model = TinyYolo()  # pruning changed the first one in place: the trained weights again
    model.load_state_dict(original)
    short = lambda m: chipprune.finetune_module(m, train[: max(1, len(train) // 4)], detection_loss, lr=0.01, progress=False)  # noqa: E731
    points = chipprune.sweep_any(model, spec, calibration, evaluate, levels=(0.7, 0.5, 0.3, 0.15), finetune=short, progress=False)
    print(chipprune.sweep_table(points, metric="hit rate"))
    return {"result": result, "tuned": tuned, "same": same, "points": points, "losses": losses}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that every step runs")
    main(parser.parse_args().quick)
