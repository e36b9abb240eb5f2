"""Datasets: the bundled CIFAR-10 sample, a torchvision CIFAR-10 root, or any ImageFolder tree.

``--data`` accepts:
  * ``bundled`` (or nothing): 640 CIFAR-10 training images and 1,000 test images shipped in the package;
  * a folder holding ``cifar-10-batches-py`` (or that folder itself), read without unrestricted pickle;
  * an ImageFolder root with ``train/`` and ``test/`` (or ``val/``) class folders;
  * a folder of images without labels (any depth of subfolders, no ``train/``): calibration images
    for models chipprune does not evaluate itself (detectors, segmenters), or to score without testing.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets
from torchvision import io as tv_io
from torchvision.transforms.functional import pil_to_tensor

from ..errors import ChipPruneError
from ..models.spec import ModelSpec
from .transforms import make_loader, make_transform

__all__ = ["ArrayDataset", "DataSource", "open_data", "data_location", "read_image", "read_image_tensor", "decode_jpeg", "image_errors", "to_rgb", "BUNDLED"]

BUNDLED = "bundled"


class ArrayDataset(Dataset):
    """Images held as a uint8 array (N, H, W, 3) with integer labels, handed to ``transform`` as PIL
    images, or as (3, H, W) uint8 tensors when ``tensors``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None, tensors: bool = False) -> None:
        self.images, self.labels, self.transform, self.tensors = images, labels, transform, tensors

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(self.images[i]).permute(2, 0, 1) if self.tensors else Image.fromarray(self.images[i])
        return (self.transform(img) if self.transform else img), int(self.labels[i])


@dataclass
class DataSource:
    """A dataset location with its two splits, built lazily for a given transform."""

    description: str
    build: Callable[[str, Callable | None, bool], Dataset]  # (split "train"/"test", transform, tensors) -> Dataset
    image_size: int | None  # native size when known (32 for CIFAR), else None
    classes: int | None = None  # number of classes when known
    has_test: bool = True  # False: images without labels, for calibration only

    def split(self, split: str, transform: Callable | None, tensors: bool = False) -> Dataset:
        """``split`` with ``transform`` applied to each RGB image (None: the images as they are): a
        PIL image, or a (3, H, W) uint8 tensor when ``tensors`` (decoded faster, for transforms
        that work on tensors)."""
        return self.build(split, transform, tensors)

    def test_loader(self, spec: ModelSpec, batch_size: int = 256) -> DataLoader:
        """The test split (``test/`` or ``val/``) with ``spec``'s evaluation transform, in order."""
        return make_loader(self.split("test", make_transform(spec, False, self.image_size)), batch_size)


# --- the bundled sample -------------------------------------------------------------------------


def _bundled() -> DataSource:
    path = resources.files("chipprune") / "assets" / "cifar10_sample.npz"
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}

    def build(split: str, transform: Callable | None, tensors: bool) -> Dataset:
        return ArrayDataset(arrays[f"{split}_images"], arrays[f"{split}_labels"], transform, tensors)

    n_train, n_test = len(arrays["train_labels"]), len(arrays["test_labels"])
    return DataSource(f"bundled CIFAR-10 sample ({n_train} train, {n_test} test images)", build, 32, 10)


# --- torchvision's CIFAR-10 python batches, without unrestricted pickle --------------------------


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays and plain containers (no arbitrary code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as exc:
        raise ChipPruneError(f"cannot read CIFAR-10 batch {path}: {exc}") from None
    return np.ascontiguousarray(data), labels


def _cifar_root(root: Path) -> DataSource:
    def build(split: str, transform: Callable | None, tensors: bool) -> Dataset:
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise ChipPruneError(f"CIFAR-10 folder {root} lacks {', '.join(missing)}")
        parts = [_read_cifar_batch(root / n) for n in names]
        return ArrayDataset(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), transform, tensors)

    return DataSource(f"CIFAR-10 batches in {root}", build, 32, 10)


# --- ImageFolder trees --------------------------------------------------------------------------


@contextmanager
def image_errors(path: str) -> Iterator[None]:
    """A file PIL cannot read, or one that claims more pixels than PIL's safety limit, as an error naming it."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise ChipPruneError(f"refusing image {path}: {str(exc).split(' could be')[0]} (a damaged file or a decompression bomb)") from None
    except Image.UnidentifiedImageError:  # PIL's own words name the file object, not the file
        raise ChipPruneError(f"cannot read image {path}: not in an image format PIL knows (damaged, empty or not an image)") from None
    except (OSError, ValueError) as exc:
        raise ChipPruneError(f"cannot read image {path}: {exc}") from None


def read_image(path: str) -> Image.Image:
    """The image at ``path`` as 8-bit RGB (grey-scale, palette, RGBA and 16-bit images converted)."""
    with image_errors(path), open(path, "rb") as f:
        return to_rgb(Image.open(f), path)


def read_image_tensor(path: str) -> torch.Tensor:
    """``read_image`` as a (3, H, W) uint8 tensor. torchvision decodes JPEGs (libjpeg-turbo straight
    into a tensor: the same pixels as PIL's, in less time, bench/train_speed.py); other formats, and
    JPEGs torchvision refuses, go through PIL, which names what is wrong. Unlike PIL, libjpeg-turbo
    prints a line on stderr for a damaged JPEG it still decodes ("Corrupt JPEG data: ...")."""
    with image_errors(path), open(path, "rb") as f:
        image = Image.open(f)  # the header only: PIL's pixel-count guard applies to both decoders
        if image.format == "JPEG":
            f.seek(0)
            try:
                return decode_jpeg(torch.frombuffer(bytearray(f.read()), dtype=torch.uint8))
            except RuntimeError:
                pass  # PIL seeks to the pixel data itself
        return pil_to_tensor(to_rgb(image, path))


def decode_jpeg(files: torch.Tensor | list[torch.Tensor], device: torch.device | str = "cpu") -> torch.Tensor | list[torch.Tensor]:
    """JPEG file bytes (a uint8 tensor, or a list of them) to (3, H, W) RGB uint8 tensors on
    ``device``: torchvision's decoder (libjpeg-turbo on the CPU, nvJPEG on CUDA). Raises RuntimeError
    on a file it cannot decode."""
    with warnings.catch_warnings():
        # torchvision 0.29 announces that TorchCodec will take over its decoders; they work meanwhile.
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities", category=DeprecationWarning)
        return tv_io.decode_jpeg(files, mode=tv_io.ImageReadMode.RGB, device=device)


def to_rgb(image: Image.Image, path: str) -> Image.Image:
    """8-bit RGB. PIL's own conversion clips 16-bit values at 255 (a white image): they are scaled."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ChipPruneError(f"cannot read image {path}: {image.mode} values outside 0-65535; save it as 8 or 16-bit")
        return Image.fromarray(np.round(values / 257.0).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        raise ChipPruneError(f"cannot read image {path}: floating-point pixels (mode F) have no agreed range; save it as 8 or 16-bit")
    return image.convert("RGB")


class _ImageFolder(datasets.ImageFolder):
    """torchvision's ImageFolder, reading each real folder once: a link back up the tree (a loop)
    or to a folder already read would count its images again."""

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):  # noqa: ANN001, ANN205
        samples, seen = [], set()
        for name in sorted(class_to_idx):
            for root, dirs, files in os.walk(os.path.join(directory, name), followlinks=True):
                dirs.sort()
                real = os.path.realpath(root)
                if real in seen:
                    warnings.warn(f"skipped {root}: a link to a folder already read (a symbolic-link loop?)")
                    dirs[:] = []
                    continue
                seen.add(real)
                samples += [(os.path.join(root, f), class_to_idx[name]) for f in sorted(files)
                            if datasets.folder.has_file_allowed_extension(f, extensions or datasets.folder.IMG_EXTENSIONS)]
        found = {i for _, i in samples}
        empty = sorted(name for name, i in class_to_idx.items() if i not in found)
        if empty and not allow_empty:
            raise FileNotFoundError(f"no images in the class folder(s) {', '.join(empty[:5])}")
        return samples


def _class_folders(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir())  # as torchvision numbers them


def _image_folder(root: Path) -> DataSource:
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    train_dir = root / "train"
    train_classes, test_classes = _class_folders(train_dir), _class_folders(test_dir)
    if train_classes != test_classes:
        # Labels are numbered by sorted class name in each split: one class missing shifts all after it.
        only_train, only_test = sorted(set(train_classes) - set(test_classes)), sorted(set(test_classes) - set(train_classes))
        raise ChipPruneError(
            f"{train_dir} and {test_dir} hold different classes (only in train: {', '.join(only_train[:5]) or '-'}; only in "
            f"{test_dir.name}: {', '.join(only_test[:5]) or '-'}), so their labels would not agree; give both the same class folders"
        )

    def build(split: str, transform: Callable | None, tensors: bool) -> Dataset:
        folder = train_dir if split == "train" else test_dir
        try:
            return _ImageFolder(str(folder), transform=transform, loader=read_image_tensor if tensors else read_image)
        except (FileNotFoundError, RuntimeError) as exc:
            raise ChipPruneError(f"cannot read images under {folder}: {exc}") from None

    return DataSource(f"ImageFolder {root}", build, None, len(train_classes))


class _UnlabelledImages(Dataset):
    """Every image under a folder (sorted paths, links to folders already read skipped), label 0."""

    def __init__(self, paths: list[str], transform: Callable | None, tensors: bool) -> None:
        self.paths, self.transform = paths, transform
        self.read = read_image_tensor if tensors else read_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.read(self.paths[i])
        return (self.transform(image) if self.transform else image), 0


def _image_files(root: Path) -> list[str]:
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        found += [os.path.join(folder, f) for f in sorted(files) if datasets.folder.has_file_allowed_extension(f, datasets.folder.IMG_EXTENSIONS)]
    return found


def _unlabelled_folder(root: Path, paths: list[str]) -> DataSource:
    def build(split: str, transform: Callable | None, tensors: bool) -> Dataset:
        if split != "train":
            raise ChipPruneError(f"{root} holds images without labels: there is nothing to test on")
        return _UnlabelledImages(paths, transform, tensors)

    return DataSource(f"{len(paths)} unlabelled images in {root}", build, None, None, has_test=False)


def data_location(path: str | Path | None) -> str:
    """How a run records its data, so that later commands can default to it: 'bundled' or an absolute path."""
    return BUNDLED if path is None or str(path) == BUNDLED else str(Path(path).resolve())


def open_data(path: str | Path | None) -> DataSource:
    """Recognise what ``path`` holds and return a DataSource for it (``None``/"bundled": the sample)."""
    if path is None or str(path) == BUNDLED:
        return _bundled()
    root = Path(path)
    if not root.exists():
        raise ChipPruneError(f"data path not found: {root}")
    if (root / "cifar-10-batches-py").is_dir():
        return _cifar_root(root / "cifar-10-batches-py")
    if (root / "data_batch_1").is_file() or (root / "test_batch").is_file():
        return _cifar_root(root)
    if (root / "train").is_dir() and ((root / "test").is_dir() or (root / "val").is_dir()):
        return _image_folder(root)
    images = _image_files(root) if root.is_dir() and not (root / "train").is_dir() else []
    if images:
        return _unlabelled_folder(root, images)
    raise ChipPruneError(
        f"{root} is neither a CIFAR-10 root (with cifar-10-batches-py/), an ImageFolder root "
        "(with train/ and test/ or val/ class folders) nor a folder of images. Use --data bundled for the shipped sample."
    )
