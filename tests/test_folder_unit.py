"""A pruned folder is one unit: written whole, replaced whole, its files checked to come from one
run; output folders are locked; data and numbers that would give silently wrong results are refused."""

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from chipprune import Calibration, ChipPruneError, load_model, load_pruned, prune, save_pruned
from chipprune.io.folder import claim_folder
from chipprune.io.pruned import read_report
from conftest import run_cli


def _pruned(seed: int = 0):
    torch.manual_seed(seed)
    model, spec = load_model("cifar_resnet20", "none")
    return prune(model, spec, "0.5", criterion="random", evaluate_on=False, recalibrate_bn=False, progress=False,
                 calibration=Calibration(images=8, batch_size=8, seed=seed))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two pruned folders from different runs."""
    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("a", 0), ("b", 1)):
        save_pruned(_pruned(seed), root / name)
    return root


def test_an_existing_folder_is_replaced_as_a_whole_and_only_when_asked(tmp_path):
    out = tmp_path / "out"
    save_pruned(_pruned(0), out)
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "pruning.json", "report.json", "report.md", "channels.png"}
    (out / "model.onnx").write_bytes(b"from this prune")
    (out / "finetuned").mkdir()
    with pytest.raises(ChipPruneError, match="already holds results; --overwrite replaces it as a whole"):
        save_pruned(_pruned(1), out)
    assert (out / "model.onnx").exists()  # refused: nothing touched
    save_pruned(_pruned(1), out, overwrite=True)
    assert not (out / "model.onnx").exists() and not (out / "finetuned").exists()  # derived from the old prune: gone with it
    load_pruned(out)
    assert {p.name for p in tmp_path.iterdir()} == {"out", ".out.lock"}  # no temporary folder left


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path):
    import fcntl

    out = tmp_path / "out"
    with claim_folder(out):
        # Another process's lock: a separate open of the lock file (this process's own claims nest).
        fd = os.open(tmp_path / ".out.lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    fd = os.open(tmp_path / ".out.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(ChipPruneError, match="another chipprune run is writing"):
            with claim_folder(out):
                pass
        assert run_cli(["prune", "--model", "cifar_resnet20", "--weights", "none", "--sparsity", "0.5", "--out", str(out),
                        "--quiet"]) == 2
    finally:
        os.close(fd)


def test_what_a_killed_save_left_is_tidied_and_a_folder_moved_aside_comes_back(tmp_path, runs):
    out = tmp_path / "out"
    shutil.copytree(runs / "a", tmp_path / ".out.abcd1234.old")  # killed between the two renames
    shutil.copytree(runs / "b", tmp_path / ".out.efgh5678.new")  # killed while filling the new folder
    with pytest.warns(UserWarning, match="restored"):
        with pytest.raises(ChipPruneError, match="already holds results"):
            save_pruned(_pruned(2), out)
    assert (out / "pruning.json").read_text() == (runs / "a" / "pruning.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]


def test_files_from_two_runs_are_refused(tmp_path, runs):
    shutil.copytree(runs / "a", tmp_path / "a")
    shutil.copy(runs / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(ChipPruneError, match="is not the weights file .*pruning.json was written with"):
        load_pruned(tmp_path / "a")
    shutil.copy(runs / "a" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    load_pruned(tmp_path / "a")
    shutil.copy(runs / "b" / "report.json", tmp_path / "a" / "report.json")
    with pytest.warns(UserWarning, match="belongs to another run"):
        assert read_report(tmp_path / "a") == {}


def test_an_onnx_file_from_another_prune_is_not_timed(tmp_path, runs, capsys):
    for name in ("a", "b"):
        shutil.copytree(runs / name, tmp_path / name)
    assert run_cli(["export", str(tmp_path / "a")]) == 0
    shutil.copy(tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx")
    capsys.readouterr()
    assert run_cli(["eval", str(tmp_path / "b"), "--no-accuracy", "--latency", "--batch-sizes", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "was not exported from this folder's weights" in out and "onnxruntime" not in out.split("latency on")[1]


def test_fine_tuning_refuses_an_earlier_run_unless_resumed_or_started_over(tmp_path, runs, capsys, small_cifar):
    shutil.copytree(runs / "a", tmp_path / "p")
    args = ["finetune", str(tmp_path / "p"), "--data", small_cifar, "--epochs", "1", "--limit-train-images", "32",
            "--train-batch-size", "16", "--val-fraction", "0", "--warmup-epochs", "0", "--quiet", "--out", str(tmp_path / "ft")]
    assert run_cli(args) == 0
    assert run_cli(args) == 2
    assert "already holds results; --overwrite" in capsys.readouterr().err
    assert run_cli(args + ["--overwrite"]) == 0
    load_pruned(tmp_path / "ft")
    # The pruned folder is pruned again: the checkpoint belongs to other weights and is not resumed.
    save_pruned(_pruned(3), tmp_path / "p", overwrite=True)
    assert run_cli(args + ["--resume"]) == 2
    assert "source_weights" in capsys.readouterr().err


def test_a_symlink_loop_is_read_once(tmp_path):
    from chipprune.data import make_transform, open_data
    from chipprune.models import get_model_spec

    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / split / "a" / "0.png")
    os.symlink(tmp_path / "train" / "a", tmp_path / "train" / "a" / "loop")
    with pytest.warns(UserWarning, match="a link to a folder already read"):
        train = open_data(tmp_path).split("train", make_transform(get_model_spec("cifar_resnet20"), False, 32))
    assert len(train) == 1


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    from chipprune.data.sources import read_image

    grey16 = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g.png")
    image = np.asarray(read_image(str(tmp_path / "g.png")))
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
    assert np.array_equal(image[..., 0], np.round(grey16 / 257).astype(np.uint8))  # PIL's own convert gives 255 nearly everywhere


def test_non_finite_outputs_are_not_an_accuracy():
    from chipprune.evaluation.metrics import evaluate

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    with torch.no_grad():
        model[1].bias[0] = float("nan")
    with pytest.raises(ChipPruneError, match="infinite or NaN outputs for 4 of 4 test images"):
        evaluate(model, [(torch.randn(4, 3, 2, 2), torch.zeros(4, dtype=torch.long))])


def test_a_diverging_fine_tune_stops_with_the_cause(tmp_path):
    from chipprune.data import open_data
    from chipprune.runtime import setup_distributed
    from chipprune.training.loop import TrainConfig, fit
    from chipprune.training.recipes import recipe_with

    model, spec = load_model("cifar_resnet20", "none")
    with torch.no_grad():
        model.linear.weight.fill_(float("inf"))
    config = TrainConfig(recipe_with("chip-cifar", epochs=1, batch_size=16, warmup_epochs=0), tmp_path, val_fraction=0, progress=False,
                         limit_train_images=32)
    with pytest.raises(ChipPruneError, match=r"the training loss became nan in epoch 1 \(by step 1\)"):
        fit(model, spec, open_data("bundled"), config, setup_distributed(torch.device("cpu")))


@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e100, 1e300])
def test_channel_independence_is_exact_at_any_finite_magnitude(scale):
    from chipprune import channel_independence
    from chipprune.scoring.independence import channel_independence_reference

    maps = torch.randn(3, 6, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = channel_independence_reference(maps)
    got = channel_independence(maps * scale) / scale
    assert torch.allclose(got, expected, rtol=1e-7, atol=1e-9 * float(expected.abs().max()))


@pytest.mark.parametrize("maps, message", [
    (torch.zeros(2, 0, 4, 4), "C and every spatial size above 0"),
    (torch.zeros(2, 3, 0, 4), "C and every spatial size above 0"),
    (torch.zeros(2, 3, 4, 4, dtype=torch.int64), "must be floating point"),
    (torch.zeros(2, 3, 4, 4, device="meta"), "meta device"),
    (torch.zeros(5), "must be (N, C, ...)"),
    ([[1.0, 2.0]], "must be a torch.Tensor"),
])
def test_channel_independence_refuses_what_it_cannot_score(maps, message):
    from chipprune import channel_independence

    with pytest.raises(ChipPruneError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        channel_independence(maps)


def test_debug_is_accepted_after_the_subcommand(capsys):
    assert run_cli(["models", "--debug"]) == 0
    with pytest.raises(ChipPruneError):  # --debug shows the traceback: the error is raised, not printed
        run_cli(["prune", "--sparsity", "[0.4", "--debug", "--quiet"])


def test_faults_and_system_errors_are_one_line(monkeypatch, capsys):
    import chipprune.cli as cli

    def fault(args):
        raise RuntimeError("something inside\nsecond line")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser, fault))
    assert run_cli(["models"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unexpected RuntimeError: something inside" in err[0] and "--debug" in err[0]

    def disk_full(args):
        raise OSError(28, "No space left on device", "/data/out/model.safetensors")

    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser, disk_full))
    assert run_cli(["models"]) == 2
    assert capsys.readouterr().err.strip() == "chipprune: error: cannot read or write /data/out/model.safetensors: No space left on device"


def _with_func(parser, func):
    for action in parser._subparsers._group_actions:
        action.choices["models"].set_defaults(func=func)
    return parser
