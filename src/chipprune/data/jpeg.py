"""JPEG training images decoded on the GPU: DataLoader workers only read the files and draw each
image's crop, the GPU decodes (nvJPEG through ``torchvision.io.decode_jpeg``), crops, resizes, flips
and normalises a whole batch.

Why: on a 16-core H200 machine, 8 workers decoding and augmenting 224-pixel JPEGs with PIL gave
1,247 images/s, against 4,683 that a ResNet-50 training step takes and 5,883 that batched GPU
decoding gives (docs/FINETUNING.md). The crop boxes and flips are drawn exactly as the loader path
draws them (torchvision's RandomResizedCrop and RandomHorizontalFlip draws from the generator seeded
by (seed, epoch, index)), from the image's size read in its header; only the resampling differs
(bilinear with antialiasing in float on the GPU, in uint8 on the CPU).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from .sources import decode_jpeg, image_errors, to_rgb
from .transforms import BatchNormalizer, augmentation_seed, flip_draw, resized_crop_box

__all__ = ["JpegCrops", "is_jpeg_folder", "collate_jpegs", "decode_batch"]

_JPEG = (".jpg", ".jpeg")


def is_jpeg_folder(samples: Sequence[tuple[str, int]]) -> bool:
    """Whether every image of an ImageFolder's ``samples`` is a JPEG (by its name)."""
    return bool(samples) and all(path.lower().endswith(_JPEG) for path, _ in samples)


class JpegCrops(Dataset):
    """Image ``i`` of ``samples`` (an ImageFolder's list, in the order of ``index``) as its file's
    bytes, its crop box, flip and whether PIL must decode it (top, left, height, width, flip,
    on_cpu), and its label."""

    def __init__(self, samples: Sequence[tuple[str, int]], index: Sequence[int], seed: int, epoch: int = 0) -> None:
        self.samples, self.index, self.seed, self.epoch = samples, list(index), seed, epoch
        self.generator = torch.Generator()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        epoch, i = item if isinstance(item, tuple) else (self.epoch, item)  # as SeededAugmentation takes them
        path, label = self.samples[self.index[i]]
        with image_errors(path):
            raw = Path(path).read_bytes()
            with Image.open(io.BytesIO(raw)) as header:  # reads the size, not the pixels
                size, mode = header.size, header.mode
        # The draws of SeededAugmentation + the training augmentation, in their order.
        self.generator.manual_seed(augmentation_seed(self.seed, epoch, i))
        top, left, h, w = resized_crop_box(size[1], size[0], self.generator)
        flip = flip_draw(self.generator)
        # Not a plain JPEG (a PNG named .jpg, CMYK): decoded by PIL, as the PIL path would.
        on_cpu = not raw.startswith(b"\xff\xd8") or mode not in ("RGB", "L")
        data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        return data, torch.tensor([top, left, h, w, int(flip), int(on_cpu)]), label


def collate_jpegs(items: list[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch: the files' bytes end to end in one tensor (a worker hands one tensor to the main
    process far more cheaply and safely than a list of them) with their lengths, the crop boxes and
    flags (B, 6: top, left, height, width, flip, decode on the CPU) and the labels (B,)."""
    return (torch.cat([b for b, _, _ in items]), torch.tensor([len(b) for b, _, _ in items]),
            torch.stack([c for _, c, _ in items]), torch.tensor([label for _, _, label in items]))


def decode_batch(data: torch.Tensor, lengths: torch.Tensor, boxes: torch.Tensor, size: int, normalize: BatchNormalizer) -> torch.Tensor:
    """Decode the files in ``data`` (``lengths`` bytes each) on ``normalize``'s device, crop each
    image to its box, resize to ``size``, flip and normalise: a float (B, 3, S, S) batch. Files marked
    for the CPU (column 5 of ``boxes``), and every file of a batch the device's decoder refuses, are
    decoded by PIL."""
    device = normalize.device
    files = list(data.split(lengths.tolist()))
    images: list[torch.Tensor | None] = [None] * len(files)
    on_device = [k for k in range(len(files)) if not boxes[k, 5]]
    try:
        decoded = decode_jpeg([files[k] for k in on_device], device) if on_device else []
        for k, image in zip(on_device, decoded):
            images[k] = image
    except RuntimeError:
        pass  # the whole batch goes through PIL below
    for k, image in enumerate(images):
        if image is None:
            with Image.open(io.BytesIO(files[k].numpy().tobytes())) as pil:
                images[k] = pil_to_tensor(to_rgb(pil, "in a training batch")).to(device)
    out = torch.empty(len(images), 3, size, size, device=device)
    for k, (image, (top, left, h, w, flip, _)) in enumerate(zip(images, boxes.tolist())):
        crop = image[:, top:top + h, left:left + w].unsqueeze(0).float()
        resized = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        out[k] = resized.flip(-1) if flip else resized
    return normalize(out)
