"""The GPU-decoding path for JPEG folders (data/jpeg.py) draws the PIL path's crops and flips, and
repeats exactly. Run here with decoding on the CPU: the same code runs with device="cuda"."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

import chipprune
from chipprune.data import open_data
from chipprune.data.jpeg import JpegCrops, collate_jpegs, decode_batch, is_jpeg_folder
from chipprune.data.transforms import BatchNormalizer, SeededAugmentation, make_transform
from chipprune.runtime import Dist
from chipprune.training.batches import _JpegBatches


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory):
    """JPEGs of several sizes with structure everywhere (a crop elsewhere looks different)."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    sizes = [(300, 200), (260, 340), (400, 300), (240, 240), (512, 384), (333, 250)]
    for split in ("train", "test"):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            yy, xx = np.mgrid[0:h, 0:w]
            image = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 3) % 256], -1).astype(np.uint8)
            image[(yy // 40 + xx // 40) % 2 == 0] //= 2  # a checkerboard of 40-pixel blocks
            image = (image.astype(int) + rng.integers(-10, 10, image.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / split / f"c{i % 2}" / f"{i}.jpg", quality=95)
    return root


def _gpu_path_batch(root, index, seed, epoch):
    spec = chipprune.get_model_spec("resnet18")
    samples = open_data(root).split("train", None).samples
    crops = JpegCrops(samples, index, seed, epoch)
    data, lengths, boxes, labels = collate_jpegs([crops[i] for i in range(len(index))])
    return decode_batch(data, lengths, boxes, spec.image_size, BatchNormalizer(spec, torch.device("cpu"))), labels, boxes


def test_the_gpu_path_crops_and_flips_as_the_pil_path_does(jpeg_root):
    spec = chipprune.get_model_spec("resnet18")
    index = [4, 0, 5, 2, 1, 3]
    got, labels, boxes = _gpu_path_batch(jpeg_root, index, seed=3, epoch=2)
    pil = SeededAugmentation(Subset(open_data(jpeg_root).split("train", None), index), make_transform(spec, True, None), seed=3)
    pil.epoch = 2
    expected = torch.stack([pil[i][0] for i in range(len(index))])
    assert got.shape == expected.shape == (6, 3, 224, 224)
    assert labels.tolist() == [pil[i][1] for i in range(len(index))]
    # Only the resampling differs (bilinear + antialiasing on the device, PIL's filter on the CPU):
    # about a grey level on average, where a different crop or flip differs by dozens.
    diff = (got - expected).abs().mean(dim=(1, 2, 3))
    assert (diff < 0.05).all(), diff
    assert 0 < int(boxes[:, 4].sum()) < 6  # some images flipped, some not
    shifted, _, _ = _gpu_path_batch(jpeg_root, index, seed=3, epoch=3)
    assert ((shifted - expected).abs().mean(dim=(1, 2, 3)) > 0.2).any()  # another epoch draws other crops


def test_the_gpu_path_repeats_exactly_and_resumes_inside_an_epoch(jpeg_root):
    spec = chipprune.get_model_spec("resnet18")
    samples = open_data(jpeg_root).split("train", None).samples
    assert is_jpeg_folder(samples) and not is_jpeg_folder([("a.png", 0)]) and not is_jpeg_folder([])
    batches = _JpegBatches(JpegCrops(samples, range(6), seed=1), spec, 1, 2, Dist(), torch.device("cpu"))
    whole = list(batches.epoch(0, 0))
    again = list(batches.epoch(0, 0))
    resumed = list(batches.epoch(0, 1))
    assert len(whole) == 3 and len(resumed) == 2
    for (a, la), (b, lb) in zip(whole, again):
        assert torch.equal(a, b) and torch.equal(la, lb)
    for (a, la), (b, lb) in zip(whole[1:], resumed):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_files_the_gpu_decoder_cannot_take_are_decoded_by_pil(tmp_path):
    # ImageNet holds a PNG named .JPEG and CMYK JPEGs; they, and a 16-bit PNG (scaled, not clipped
    # to white), must come out as the PIL path gives them.
    spec = chipprune.get_model_spec("resnet18")
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        (tmp_path / split / "c0").mkdir(parents=True)
        pixels = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / split / "c0" / "png_in_disguise.jpg", format="PNG")
        Image.fromarray(pixels).convert("CMYK").save(tmp_path / split / "c0" / "cmyk.jpg", quality=95)
        Image.fromarray((pixels[..., 0].astype(np.uint16) * 200)).save(tmp_path / split / "c0" / "grey16.jpg", format="PNG")
    samples = open_data(tmp_path).split("train", None).samples
    assert is_jpeg_folder(samples)
    crops = JpegCrops(samples, [0, 1, 2], seed=5)
    items = [crops[0], crops[1], crops[2]]
    assert [int(box[5]) for _, box, _ in items] == [1, 1, 1]  # all marked for PIL
    got = decode_batch(*collate_jpegs(items)[:3], spec.image_size, BatchNormalizer(spec, torch.device("cpu")))
    pil = SeededAugmentation(Subset(open_data(tmp_path).split("train", None), [0, 1, 2]), make_transform(spec, True, None), seed=5)
    expected = torch.stack([pil[0][0], pil[1][0], pil[2][0]])
    assert ((got - expected).abs().mean(dim=(1, 2, 3)) < 0.05).all()


def test_a_damaged_file_names_itself(tmp_path):
    (tmp_path / "train" / "c0").mkdir(parents=True)
    (tmp_path / "train" / "c0" / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    crops = JpegCrops([(str(tmp_path / "train" / "c0" / "bad.jpg"), 0)], [0], seed=0)
    with pytest.raises(chipprune.ChipPruneError, match="cannot read image .*bad.jpg"):
        crops[0]
