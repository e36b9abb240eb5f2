"""The in-memory data path augments as the PIL path does, draws each image's augmentation from
(seed, epoch, index) alone, and trains; distillation learns from the recorded original model."""

import json
import shutil

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

import chipprune
from chipprune import ChipPruneError
from chipprune.data import open_data
from chipprune.data.memory import MemoryImages, augmentation_draws, memory_images
from conftest import run_cli


def _memory(images: np.ndarray) -> MemoryImages:
    spec = chipprune.get_model_spec("cifar_resnet20")
    return MemoryImages(torch.from_numpy(images), torch.zeros(len(images), dtype=torch.long), spec)


def test_a_batch_is_cropped_flipped_and_normalised_like_torchvision():
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    memory = _memory(images)
    index = torch.arange(16)
    got, _ = memory.batch(index, augment=True, seed=3, epoch=2)
    dy, dx, flip = augmentation_draws(3, 2, index)
    spec = chipprune.get_model_spec("cifar_resnet20")
    for i in range(16):
        x = TF.pad(torch.from_numpy(images[i]).permute(2, 0, 1), [4])
        x = TF.crop(x, int(dy[i]), int(dx[i]), 32, 32)
        x = TF.hflip(x) if flip[i] else x
        expected = TF.normalize(x.float() / 255, spec.mean, spec.std)
        assert torch.allclose(got[i], expected, atol=1e-5)
    assert 0 < int(flip.sum()) < 16 and len(set(dy.tolist())) > 3  # the draws vary


def test_an_images_augmentation_depends_only_on_seed_epoch_and_index():
    images = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    memory = _memory(images)
    alone, _ = memory.batch(torch.tensor([5]), augment=True, seed=1, epoch=4)
    among, _ = memory.batch(torch.tensor([2, 5, 7]), augment=True, seed=1, epoch=4)
    assert torch.equal(alone[0], among[1])
    other_epoch, _ = memory.batch(torch.arange(8), augment=True, seed=1, epoch=5)
    same_epoch, _ = memory.batch(torch.arange(8), augment=True, seed=1, epoch=4)
    assert not torch.equal(other_epoch, same_epoch)
    plain, _ = memory.batch(torch.arange(8), augment=False)
    spec = chipprune.get_model_spec("cifar_resnet20")
    assert torch.allclose(plain[3], TF.normalize(torch.from_numpy(images[3]).permute(2, 0, 1).float() / 255, spec.mean, spec.std), atol=1e-5)


def test_cifar_size_data_is_held_in_memory_and_large_images_are_not(tmp_path):
    from PIL import Image

    spec = chipprune.get_model_spec("cifar_resnet20")
    assert memory_images(open_data("bundled"), "train", spec, torch.device("cpu")) is not None
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        for i, size in enumerate((32, 32, 40)):
            Image.fromarray(np.full((size, size, 3), i, dtype=np.uint8)).save(tmp_path / split / "a" / f"{i}.png")
    assert memory_images(open_data(tmp_path), "train", spec, torch.device("cpu")) is None  # one image of another size
    (tmp_path / "train" / "a" / "2.png").unlink()
    held = memory_images(open_data(tmp_path), "train", spec, torch.device("cpu"))
    assert held is not None and held.images.shape == (2, 3, 32, 32) and int(held.images[1].max()) == 1
    assert memory_images(open_data("bundled"), "train", chipprune.get_model_spec("resnet18"), torch.device("cpu")) is None


@pytest.fixture(scope="module")
def pruned_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("kd") / "p"
    assert run_cli(["prune", "--model", "cifar_resnet20", "--weights", "none", "--sparsity", "0.5", "--criterion", "l1",
                    "--no-eval", "--out", str(out), "--quiet"]) == 0
    return out


def test_distillation_needs_a_teacher_and_finds_the_recorded_one(tmp_path, pruned_folder, capsys):
    folder = tmp_path / "p"
    shutil.copytree(pruned_folder, folder)
    args = ["finetune", str(folder), "--epochs", "1", "--limit-train-images", "32", "--train-batch-size", "16", "--val-fraction", "0",
            "--warmup-epochs", "0", "--distill-weight", "0.5", "--quiet"]
    assert run_cli(args + ["--out", str(tmp_path / "a")]) == 2  # pruned from random weights: nothing to learn from
    assert "randomly initialised model, which cannot teach" in capsys.readouterr().err
    teacher = tmp_path / "teacher.safetensors"
    from safetensors.torch import save_file

    save_file(chipprune.load_model("cifar_resnet20", None)[0].state_dict(), str(teacher))
    assert run_cli(args + ["--out", str(tmp_path / "b"), "--teacher-weights", str(teacher)]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["finetune"]["recipe"]["distill_weight"] == 0.5


def test_distillation_from_an_identical_teacher_adds_nothing_to_the_loss():
    from chipprune.runtime import Dist
    from chipprune.training.batches import split_data
    from chipprune.training.loop import TrainConfig, _Trainer
    from chipprune.training.recipes import recipe_with

    model, spec = chipprune.load_model("cifar_resnet20", None)
    model.eval()  # BatchNorm in eval mode in both: the same outputs
    data = split_data(spec, open_data("bundled"), 0, 16, 0.0, 32, Dist())
    trainer = _Trainer(model, data, TrainConfig(recipe_with("chip-cifar", distill_weight=1.0, batch_size=16), "unused"), Dist(), model)
    x = torch.randn(4, 3, 32, 32)
    logits = model(x)
    assert float(trainer._with_distillation(torch.tensor(0.0), logits, x).detach()) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ChipPruneError, match="needs the original model"):
        _Trainer(model, data, TrainConfig(recipe_with("chip-cifar", distill_weight=0.5, batch_size=16), "unused"), Dist(), None)


def test_the_loader_path_draws_each_crop_from_seed_epoch_and_index_whatever_its_workers(tmp_path, monkeypatch):
    # The loader path's workers persist across epochs, so they must take the epoch from the sampler.
    from PIL import Image
    from torch.utils.data import Subset

    from chipprune.data.transforms import SeededAugmentation, augmentation, make_transform
    from chipprune.runtime import Dist
    from chipprune.training import batches as batches_module

    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        for i in range(6 if split == "train" else 1):  # JPEGs (torchvision decodes them) and PNGs (PIL does)
            Image.fromarray(rng.integers(0, 256, (48 + 8 * i, 64, 3), dtype=np.uint8)).save(tmp_path / split / "a" / f"{i}.{'jpg' if i % 2 else 'png'}")
    spec = chipprune.get_model_spec("resnet18")
    source = open_data(tmp_path)

    def run(workers: int) -> list[list[torch.Tensor]]:
        monkeypatch.setattr(batches_module, "loader_workers", lambda: workers)
        dataset = SeededAugmentation(Subset(source.split("train", None, tensors=True), range(6)), augmentation(spec, None), seed=7)
        batches = batches_module._LoaderBatches(dataset, spec, 7, 2, Dist(), torch.device("cpu"))
        normalize, threads_seen = batches.normalize, set()

        def recording(images: torch.Tensor) -> torch.Tensor:
            threads_seen.add(torch.get_num_threads())
            return normalize(images)

        batches.normalize = recording
        recording.device = normalize.device
        epochs = [[x for x, _ in batches.epoch(e, first) if torch.get_num_threads() == 2] for e, first in ((0, 0), (1, 0), (1, 1), (0, 0))]
        assert batches._epoch_loader.persistent_workers == (workers > 0)
        # With workers on every core the batch is normalised on one thread; the step gets its threads back.
        assert threads_seen == {1 if workers else 2}
        return epochs

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        alone, shared = run(0), run(2)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(alone, shared):
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    first, second, resumed, again = alone
    assert len(first) == 3 and len(resumed) == 2
    assert all(torch.equal(x, y) for x, y in zip(second[1:], resumed)) and all(torch.equal(x, y) for x, y in zip(first, again))
    assert not torch.equal(first[0], second[0])
    # Each image is the float transform's output on PIL's decoding, normalised a batch at a time instead of per image.
    order = list(batches_module.DistributedSampler(range(6), num_replicas=1, rank=0, shuffle=True, seed=7, drop_last=True))
    per_image = SeededAugmentation(Subset(source.split("train", None), range(6)), make_transform(spec, True, None), seed=7)
    assert torch.allclose(first[0], torch.stack([per_image[(0, i)][0] for i in order[:2]]), atol=1e-5)


def test_images_read_as_tensors_have_pils_pixels_and_bad_files_a_clear_error(tmp_path, monkeypatch):
    from PIL import Image

    from chipprune.data.sources import read_image, read_image_tensor

    rng = np.random.default_rng(4)
    colour = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    colour.save(tmp_path / "rgb.jpg", quality=85)
    colour.convert("L").save(tmp_path / "grey.jpg")
    colour.convert("CMYK").save(tmp_path / "cmyk.jpg")
    colour.convert("RGBA").save(tmp_path / "rgba.png")
    colour.convert("P").save(tmp_path / "palette.gif")
    for name in ("rgb.jpg", "grey.jpg", "cmyk.jpg", "rgba.png", "palette.gif"):
        got = read_image_tensor(str(tmp_path / name))
        assert got.dtype == torch.uint8 and got.shape == (3, 37, 53)
        assert torch.equal(got, TF.pil_to_tensor(read_image(str(tmp_path / name)))), name
    data = (tmp_path / "rgb.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    for name, why in (("truncated.jpg", "truncated"), ("text.jpg", "not in an image format PIL knows")):
        with pytest.raises(ChipPruneError, match=f"cannot read image .*{name}: .*{why}"):
            read_image_tensor(str(tmp_path / name))
    bundled = open_data("bundled")  # arrays in memory, read as tensors or as PIL images
    assert torch.equal(bundled.split("test", None, tensors=True)[3][0], TF.pil_to_tensor(bundled.split("test", None)[3][0]))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 900)  # PIL's guard holds for torchvision's decoder too
    with pytest.raises(ChipPruneError, match="refusing image .*rgb.jpg"):
        read_image_tensor(str(tmp_path / "rgb.jpg"))


def test_an_unreadable_image_in_a_worker_is_one_clear_error(tmp_path, monkeypatch):
    # DataLoader rebuilds a worker's exception from its traceback text; the user gets the message.
    from PIL import Image

    from chipprune.data.transforms import SeededAugmentation, augmentation
    from chipprune.runtime import Dist
    from chipprune.training import batches as batches_module

    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tmp_path / split / "a" / f"{i}.jpg")
    (tmp_path / "train" / "a" / "2.jpg").write_bytes(b"not a JPEG")
    monkeypatch.setattr(batches_module, "loader_workers", lambda: 2)
    spec = chipprune.get_model_spec("resnet18")
    dataset = SeededAugmentation(open_data(tmp_path).split("train", None, tensors=True), augmentation(spec, None), seed=0)
    batches = batches_module._LoaderBatches(dataset, spec, 0, 2, Dist(), torch.device("cpu"))
    try:  # not pytest.raises: its record of the traceback would keep the workers alive past the test
        list(batches.epoch(0, 0))
        message = "no error"
    except ChipPruneError as exc:
        message = str(exc)
    assert message.startswith("cannot read image ") and "2.jpg" in message and "Traceback" not in message and "\n" not in message


def test_the_augmentation_draws_torchvisions_crops_and_flips_from_its_own_generator():
    # Seeded alike, the augmentation's generator gives the crop and flip that torchvision's
    # transforms draw from the global generator; that generator is neither read nor changed.
    from PIL import Image
    from torchvision import transforms
    from torchvision.transforms import v2

    from chipprune.data.transforms import SeededAugmentation, augmentation

    yy, xx = np.mgrid[0:180, 0:260]
    wide = Image.fromarray(np.stack([xx % 256, yy * 255 // 180, (xx * yy) % 251], -1).astype(np.uint8))
    thin = Image.fromarray(np.tile(np.arange(400, dtype=np.uint8)[None, :, None], (8, 1, 3)))  # ten misses: the centred fallback
    spec = chipprune.get_model_spec("resnet18")
    tensor_v2 = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()])
    pil_v1 = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.PILToTensor()])
    for seed in range(8):
        for image in (wide, thin):
            got = augmentation(spec, None)(image, torch.Generator().manual_seed(seed))
            assert got.dtype == torch.uint8 and got.shape == (3, 224, 224)
            torch.manual_seed(seed)
            assert torch.equal(got, tensor_v2(image))
            torch.manual_seed(seed)  # PIL's resampling: within a grey level; another crop or flip differs by dozens
            assert (got.int() - pil_v1(image).int()).abs().float().mean() < 1.0
    cifar = chipprune.get_model_spec("cifar_resnet20")
    rng = np.random.default_rng(5)
    for size, native in ((32, 32), (40, None)):  # a 40-pixel image is resized to 32 first
        image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        steps = [v2.Resize((32, 32), antialias=True)] if size != 32 else []
        reference = v2.Compose([v2.PILToTensor(), *steps, v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
        for seed in range(8):
            got = augmentation(cifar, native)(image, torch.Generator().manual_seed(seed))
            torch.manual_seed(seed)
            assert torch.equal(got, reference(image))
    state = torch.get_rng_state()
    seeded = SeededAugmentation([(wide, 0), (thin, 1)], augmentation(spec, None), seed=3)
    first = [seeded[(1, i)][0] for i in (0, 1)]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, seeded[(1, i)][0]) for i, a in enumerate(first)) and not torch.equal(first[0], seeded[(2, 0)][0])


def test_evaluation_batches_from_workers_match_the_per_image_transform_and_repeat(tmp_path, monkeypatch):
    from PIL import Image

    from chipprune.data.transforms import make_transform, preprocessing
    from chipprune.training import batches as batches_module

    rng = np.random.default_rng(3)
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (40 + 9 * i, 70, 3), dtype=np.uint8)).save(tmp_path / split / "a" / f"{i}.png")
    spec = chipprune.get_model_spec("resnet18")
    source = open_data(tmp_path)
    per_image = source.split("test", make_transform(spec, False, None))
    expected = torch.stack([per_image[i][0] for i in (4, 1, 3)])
    for workers in (0, 2):
        monkeypatch.setattr(batches_module, "loader_workers", lambda: workers)
        batches = batches_module._LoaderEval(source.split("test", preprocessing(spec, None)), [4, 1, 3], spec, torch.device("cpu"))
        for _ in range(2):  # every evaluation gets the same batches
            (images, labels), = list(batches)
            assert images.dtype == torch.float32 and torch.allclose(images, expected, atol=1e-5) and labels.tolist() == [0, 0, 0]
