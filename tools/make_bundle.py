"""Build the assets shipped inside the package from ../shared (run once by a maintainer).

    python tools/make_bundle.py --shared ../shared

Writes src/chipprune/assets/:
  cifar10_sample.npz          640 training images (64 per class, the first of each class in the
                              official order) for calibration, and the 1,000 lossless test images
  cifar_resnet56.safetensors  the reference ResNet-56 CIFAR-10 weights (module. prefix stripped)
  LICENSE-cifar_resnet56      their BSD-2-Clause license
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

ASSETS = Path(__file__).resolve().parents[1] / "src" / "chipprune" / "assets"
TRAIN_PER_CLASS = 64


def _read_split(root: Path, per_class: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted((root / name).glob("*.png"))
        for f in files[:per_class] if per_class else files:
            images.append(np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    args = parser.parse_args()
    data = args.shared / "data" / "cifar10"
    train_x, train_y, classes = _read_split(data / "train", TRAIN_PER_CLASS)
    test_x, test_y, _ = _read_split(data / "test", None)
    ASSETS.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        ASSETS / "cifar10_sample.npz",
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        classes=np.asarray(classes),
    )
    wdir = args.shared / "weights" / "cifar10-resnet"
    ckpt = torch.load(wdir / "resnet56-4bfd9763.th", map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v.contiguous() for k, v in ckpt["state_dict"].items()}
    save_file(state, str(ASSETS / "cifar_resnet56.safetensors"), metadata={"source": "resnet56-4bfd9763.th"})
    shutil.copy(wdir / "LICENSE", ASSETS / "LICENSE-cifar_resnet56")
    print(f"train {train_x.shape}, test {test_x.shape}; wrote {ASSETS}")


if __name__ == "__main__":
    main()
