import pickle

import numpy as np
import pytest

from conftest import EvilPickle
import torch
from PIL import Image

from chipprune import ChipPruneError, get_model_spec
from chipprune.data import make_transform, open_data


def _write_cifar(root, n=20):
    rng = np.random.default_rng(0)
    batches = root / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        with open(batches / name, "wb") as f:
            pickle.dump(entry, f)


def test_cifar_python_batches_load(tmp_path):
    _write_cifar(tmp_path)
    spec = get_model_spec("cifar_resnet20")
    source = open_data(tmp_path)
    train = source.split("train", make_transform(spec, False, source.image_size))
    test = source.split("test", make_transform(spec, False, source.image_size))
    assert len(train) == 100 and len(test) == 20
    x, y = train[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10


def test_cifar_batch_with_code_is_refused(tmp_path):
    _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": EvilPickle(str(marker)), "labels": [0]}, f)
    source = open_data(tmp_path)
    with pytest.raises(ChipPruneError, match="refusing"):
        source.split("test", lambda x: x)
    assert not marker.exists()


def test_image_folder_with_val_split(tmp_path):
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((40, 48, 3), 40 * i, dtype=np.uint8)).save(d / f"{i}.png")
    spec = get_model_spec("resnet18")
    source = open_data(tmp_path)
    test = source.split("test", make_transform(spec, False, source.image_size))
    x, y = test[4]
    assert len(test) == 6 and x.shape == (3, 224, 224) and y == 1


def test_bundled_sample_has_calibration_and_test_images():
    spec = get_model_spec("cifar_resnet56")
    source = open_data("bundled")
    train = source.split("train", make_transform(spec, True, 32))
    test = source.split("test", make_transform(spec, False, 32))
    assert len(train) == 640 and len(test) == 1000
    labels = torch.tensor([test.labels[i] for i in range(len(test))])
    assert set(labels.tolist()) == set(range(10))


@pytest.mark.parametrize("make", ["missing", "empty", "random"])
def test_unrecognised_data_paths(tmp_path, make):
    path = tmp_path / "nope"
    if make != "missing":
        path.mkdir()
    if make == "random":
        (path / "notes.txt").write_text("hi")
    with pytest.raises(ChipPruneError, match="not found|neither"):
        open_data(path)
