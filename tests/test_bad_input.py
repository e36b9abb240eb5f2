"""Bad input gets a clear message and exit status 2, never a traceback (one row per mistake)."""

import json
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from chipprune import ChipPruneError, PlanRequest, get_model_spec, load_model
from chipprune.cli import main
from chipprune.planning import make_plan, parse_sparsity
from chipprune.surgery import prunable_groups
from conftest import EvilPickle, run_cli


@pytest.fixture(scope="module")
def two_pruned_folders(tmp_path_factory):
    """Two pruned ResNet-20 folders from different runs (different seeds), made once."""
    from chipprune import Calibration, prune, save_pruned

    root = tmp_path_factory.mktemp("pruned")
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        model, spec = load_model("cifar_resnet20", "none")
        save_pruned(prune(model, spec, "0.5", criterion="random", evaluate_on=False, recalibrate_bn=False, progress=False,
                          calibration=Calibration(images=8, batch_size=8, seed=seed)), root / name)
    return root


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (PIL reads only the header on open)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _folders_from_two_runs(tmp, sources):
    import shutil

    shutil.copytree(sources / "a", tmp / "pruned")
    shutil.copytree(sources / "a", tmp / "mixed")
    shutil.copy(sources / "b" / "model.safetensors", tmp / "mixed" / "model.safetensors")  # another run's weights
    shutil.copytree(sources / "a", tmp / "edited")
    record = json.loads((tmp / "edited" / "pruning.json").read_text())
    group = next(g for g in record["groups"] if g["removed"])
    kept = sorted(set(range(group["channels_before"])) - set(group["removed"]))
    group["removed"] = sorted(group["removed"][1:] + kept[:1])  # other channels, the same count
    (tmp / "edited" / "pruning.json").write_text(json.dumps(record))


def _files(tmp, sources=None):
    """Broken inputs a user might hand us, made once per test."""
    (tmp / "truncated.pt").write_bytes(b"PK\x03\x04\x14\x00")
    (tmp / "garbage.safetensors").write_bytes(b"\xff" * 64)
    torch.save(load_model("cifar_resnet20", None)[0].state_dict(), tmp / "r20.pt")
    torch.save({"state_dict": EvilPickle(str(tmp / "pwned"))}, tmp / "evil.pth")
    (tmp / "empty").mkdir()
    (tmp / "plan.json").write_text(json.dumps({"layer9.*": 0.5}))
    (tmp / "badplan.yaml").write_text("layer1: [oops\n")
    (tmp / "mymod.py").write_text("def not_a_model():\n    return 42\n\ndef needs_args(width):\n    return None\n")
    (tmp / "text.pth").write_text("hello\n")
    bad = tmp / "badimages"
    for split in ("train", "test"):
        (bad / split / "a").mkdir(parents=True)
        (bad / split / "a" / "0.png").write_bytes(b"not a png")
    for split in ("train", "test"):  # eleven classes, for ten-class models
        for c in range(11):
            (tmp / "eleven" / split / f"c{c:02d}").mkdir(parents=True)
            Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp / "eleven" / split / f"c{c:02d}" / "0.png")
    grey = tmp / "grey"
    for split in ("train", "test"):
        (grey / split / "a").mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(grey / split / "a" / "0.png")
    for split, classes in (("train", "a"), ("test", "ab")):  # test/ has a class train/ lacks
        for c in classes:
            (tmp / "missing_class" / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp / "missing_class" / split / c / "0.png")
    for split in ("train", "test"):
        (tmp / "bomb" / split / "a").mkdir(parents=True)
        (tmp / "bomb" / split / "a" / "0.png").write_bytes(_png_claiming(40000, 40000))
    state = load_model("cifar_resnet20", "none")[0].state_dict()
    state["conv1.weight"][0, 0, 0, 0] = float("inf")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "inf.safetensors"))
    if sources is not None:
        _folders_from_two_runs(tmp, sources)
    return tmp


CASES = [
    # sparsity and plans
    (["prune", "--sparsity", "[0.4]*2"], "has 2 entries but cifar_resnet56 needs 30 (1: stem conv1"),
    (["prune", "--sparsity", "[0.4"], "cannot read term 1"),
    (["prune", "--sparsity", "[0.4]*x+[0.1]"], "cannot read term 1"),
    (["prune", "--sparsity", "[1.2]*30"], "must lie in [0, 1)"),
    (["prune", "--sparsity", "0.99"], "would leave group"),
    (["prune", "--sparsity", "{tmp}/plan.json"], "'layer9.*' matches no prunable layer"),
    (["prune", "--sparsity", "{tmp}/badplan.yaml"], "cannot parse plan file"),
    (["prune", "--sparsity", "{tmp}/missing.json"], "plan file not found"),
    (["prune", "--target-macs", "0.0001"], "cannot be reached"),
    (["prune", "--target-macs", "2e9"], "the model has"),
    (["prune", "--target-macs", "0.5", "--sparsity", "0.3"], "not both"),
    (["prune", "--target-macs", "1.5"], "give the fraction of the MACs to keep, in (0, 1)"),
    (["prune", "--sparsity=-0.1"], "must lie in [0, 1); got -0.1"),
    (["prune", "--sparsity="], "--sparsity is empty"),
    (["prune", "--ignore", "layer9.conv"], "--ignore names no layer"),
    # models and weights
    (["prune", "--model", "resnet5"], "unknown model 'resnet5'. Did you mean"),
    (["prune", "--model", "nosuchpkg.mod:fn"], "cannot import 'nosuchpkg.mod'"),
    (["prune", "--model", "mymod:missing"], "has no function 'missing'"),
    (["prune", "--model", "mymod:not_a_model"], "returned int, not an nn.Module"),
    (["prune", "--weights", "{tmp}/nothere.pt"], "weights file not found"),
    (["prune", "--weights", "{tmp}/truncated.pt"], "truncated or corrupt"),
    (["prune", "--weights", "{tmp}/garbage.safetensors"], "cannot read safetensors file"),
    (["prune", "--weights", "{tmp}/r20.pt"], "do not fit this model (missing layer1.3.conv1.weight"),
    (["prune", "--weights", "{tmp}/evil.pth"], "never runs"),
    (["prune", "--weights", "{tmp}/text.pth"], "not a PyTorch file, or truncated or corrupt"),
    (["prune", "--model", "mymod:needs_args"], "it must build the model with no arguments"),
    (["prune", "--device", "foo"], "unknown --device 'foo'"),
    (["score", "--model", "cifar_resnet20", "--weights", "none", "--calib-images", "8", "--batch-size", "8",
      "--out", "{tmp}/text.pth/s.safetensors"], "cannot write"),
    (["prune", "--model", "cifar_resnet20"], "no weights ship with 'cifar_resnet20'"),
    (["train", "--model", "cifar_resnet20", "--weights", "bundled"], "no weights ship with 'cifar_resnet20'"),  # not random ones
    (["prune", "--image-size", "0"], "argument --image-size: must be at least 16, got 0"),
    (["prune", "--num-classes", "-1"], "argument --num-classes: must be at least 1, got -1"),
    (["pilot", "--confidence", "1.5", "--out", "{tmp}/pilot"], "argument --confidence: must be a number in (0, 1), got 1.5"),
    # data
    (["prune", "--data", "{tmp}/nowhere"], "data path not found"),
    (["prune", "--data", "{tmp}/empty"], "neither a CIFAR-10 root"),
    (["prune", "--model", "cifar_resnet20", "--weights", "none", "--sparsity", "0.3", "--data", "{tmp}/badimages"], "cannot read image"),
    (["prune", "--calib-images", "1000", "--require-calib-images"], "1000 calibration images asked for"),
    (["prune", "--calib-images", "0"], "argument --calib-images: must be at least 1, got 0"),
    (["prune", "--model", "cifar_resnet20", "--weights", "none", "--sparsity", "0.3", "--data", "{tmp}/eleven",
      "--calib-images", "4", "--batch-size", "4"], "class label 10, but the model predicts 10 classes (0-9)"),
    # other commands
    (["eval", "{tmp}/empty"], "file not found"),
    (["eval", "{tmp}/nowhere"], "no such folder"),
    (["finetune", "{tmp}/empty"], "file not found"),
    (["prune", "--device", "cuda"] if not torch.cuda.is_available() else ["prune", "--model", "x"], "cuda" if not torch.cuda.is_available() else "unknown"),
    # numbers: range-checked when parsed, before any work
    (["finetune", "{tmp}/empty", "--epochs", "-1"], "argument --epochs: must be at least 1, got -1"),
    (["finetune", "{tmp}/empty", "--val-fraction", "-0.5"], "argument --val-fraction: must be a number in [0, 1), got -0.5"),
    (["finetune", "{tmp}/empty", "--limit-train-images", "-500"], "argument --limit-train-images: must be at least 1"),
    (["finetune", "{tmp}/empty", "--checkpoint-every", "-1"], "argument --checkpoint-every: must be at least 0"),
    (["finetune", "{tmp}/empty", "--train-batch-size", "0"], "argument --train-batch-size: must be at least 1"),
    (["finetune", "{tmp}/empty", "--label-smoothing", "2"], "argument --label-smoothing: must be a number in [0, 1)"),
    (["finetune", "{tmp}/empty", "--momentum", "-1"], "argument --momentum: must be a number in [0, 1)"),
    (["finetune", "{tmp}/empty", "--lr", "-1"], "argument --lr: must be a number in (0, inf)"),
    (["finetune", "{tmp}/empty", "--lr", "nan"], "argument --lr: must be a number in (0, inf), got nan"),
    (["finetune", "{tmp}/empty", "--weight-decay", "inf"], "argument --weight-decay: must be a number in [0, inf), got inf"),
    (["finetune", "{tmp}/empty", "--warmup-epochs", "-2"], "argument --warmup-epochs"),
    (["finetune", "{tmp}/empty", "--epochs", "two"], "argument --epochs: expected a whole number, got 'two'"),
    (["train", "--lr", "1e400"], "argument --lr: must be a number in (0, inf), got 1e400"),
    (["eval", "{tmp}/empty", "--batch-sizes", "0"], "argument --batch-sizes: must be at least 1, got 0"),
    (["prune", "--round-to", "0"], "argument --round-to: must be at least 1"),
    (["prune", "--target-macs", "0"], "argument --target-macs: must be a number in (0, inf)"),
    (["prune", "--target-macs", "nan"], "argument --target-macs"),
    (["prune", "--max-shared-ratio", "1"], "argument --max-shared-ratio: must be a number in (0, 1)"),
    (["prune", "--latency-batch", "0"], "argument --latency-batch: must be at least 1"),
    (["prune", "--target-latency", "1.5"], "argument --target-latency: give a fraction in (0, 1)"),
    (["prune", "--target-latency", "fast"], "argument --target-latency: --target-latency must be a fraction"),
    (["prune", "--batch-size", "-3"], "argument --batch-size: must be at least 1"),
    (["prune", "--seed", "-1"], "argument --seed: must be at least 0"),
    (["pilot", "--levels", "0.5", "1.2"], "argument --levels: must be a number in (0, 1), got 1.2"),
    (["pilot", "--max-drop", "-1"], "argument --max-drop"),
    (["pilot", "--finetune-epochs", "-1"], "argument --finetune-epochs: must be at least 0"),
    (["pilot", "--throughput-batch", "0"], "argument --throughput-batch: must be at least 1"),
    (["pilot", "--sensitivity-ratios", "0"], "argument --sensitivity-ratios: must be a number in (0, 1)"),
    # outputs: checked before any work
    (["prune", "--out", "{tmp}/text.pth"], "cannot write --out {tmp}/text.pth: it is a file"),
    (["prune", "--out", "{tmp}/eleven"], "already holds results; --overwrite replaces it as a whole"),
    (["prune", "--out", "{tmp}/text.pth/out"], "is a file, so nothing can be written under it"),
    (["finetune", "{tmp}/pruned", "--out", "{tmp}/eleven"], "already holds results"),
    (["score", "--out", "{tmp}/s.json"], "must end in .safetensors"),
    (["export", "{tmp}/pruned", "--out", "{tmp}/eleven"], "cannot write --out {tmp}/eleven: it is a folder"),
    (["pilot", "--out", "{tmp}/text.pth"], "it is a file"),
    # folders from other runs
    (["eval", "{tmp}/mixed"], "is not the weights file"),
    (["eval", "{tmp}/edited"], "was changed after it was written"),
    (["finetune", "{tmp}/mixed"], "is not the weights file"),
    # data
    (["prune", "--model", "cifar_resnet20", "--weights", "none", "--sparsity", "0.3", "--data", "{tmp}/missing_class"],
     "hold different classes (only in train: -; only in test: b)"),
    (["prune", "--model", "cifar_resnet20", "--weights", "none", "--sparsity", "0.3", "--data", "{tmp}/bomb",
      "--calib-images", "2", "--batch-size", "2"], "refusing image"),
    (["prune", "--model", "cifar_resnet20", "--weights", "{tmp}/inf.safetensors"], "hold infinite or NaN values"),
    (["prune", "--sparsity", "{tmp}/badplan.yaml"], "at line 2, column 1"),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, two_pruned_folders):
    """The broken inputs, made once; each row works on its own copy."""
    return _files(tmp_path_factory.mktemp("bad-files"), two_pruned_folders)


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_row(args, message, tmp_path, capsys, monkeypatch, bad_files):
    import shutil

    tmp = tmp_path / "files"
    shutil.copytree(bad_files, tmp, symlinks=True)
    monkeypatch.chdir(tmp)  # so mymod.py imports, and nothing lands in the repository
    code = run_cli([a.replace("{tmp}", str(tmp)) for a in args] + (["--quiet"] if args[0] not in ("eval", "export") else []))
    err = capsys.readouterr().err
    assert code == 2, err
    assert message.replace("{tmp}", str(tmp)) in err and "Traceback" not in err
    errors = [line for line in err.strip().splitlines() if ": warning: " not in line]
    assert len(errors) == 1, err  # one line: the cause and the remedy
    assert not (tmp / "pwned").exists()


def test_grey_scale_images_are_converted(tmp_path):
    from chipprune.data import make_transform, open_data

    tmp = _files(tmp_path)
    source = open_data(tmp / "grey")
    x, _ = source.split("train", make_transform(get_model_spec("cifar_resnet20"), False, None))[0]
    assert x.shape == (3, 32, 32)


def test_pruned_folder_whose_weights_disagree_with_its_description(tmp_path):
    from chipprune import load_pruned, prune, save_pruned
    from chipprune import Calibration

    model, spec = load_model("cifar_resnet20", "none")
    save_pruned(prune(model, spec, "0.5", criterion="l1", evaluate_on=False, recalibrate_bn=False, progress=False,
                      calibration=Calibration(images=8, batch_size=8)), tmp_path)
    record = json.loads((tmp_path / "pruning.json").read_text())
    record["groups"][1]["removed"] = record["groups"][1]["removed"][:-1]  # one channel fewer removed than saved
    (tmp_path / "pruning.json").write_text(json.dumps(record))
    with pytest.raises(ChipPruneError, match=r"pruning.json was changed after it was written"):
        load_pruned(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ChipPruneError, match="has no model.safetensors"):
        load_pruned(tmp_path)


def test_damaged_or_foreign_pruning_records_are_refused_before_anything_runs(tmp_path, capsys):
    from chipprune import load_pruned, prune, save_pruned
    from chipprune import Calibration

    model, spec = load_model("cifar_resnet20", "none")
    save_pruned(prune(model, spec, "0.5", criterion="l1", evaluate_on=False, recalibrate_bn=False, progress=False,
                      calibration=Calibration(images=8, batch_size=8)), tmp_path)
    good = json.loads((tmp_path / "pruning.json").read_text())
    damaged = [{**good, "groups": None}, {**good, "groups": [{"group": "conv1"}]}, {**good, "model": 3},
               {**good, "groups": [{"group": "conv1", "removed": ["a"]}]}]
    for record in damaged:
        (tmp_path / "pruning.json").write_text(json.dumps(record))
        assert main(["eval", str(tmp_path), "--no-accuracy"]) == 2
        assert "is damaged" in capsys.readouterr().err
    # A record naming code (package.module:function) is not imported unless the user names it too.
    (tmp_path / "pruning.json").write_text(json.dumps({**good, "model": "os:getcwd"}))
    with pytest.raises(ChipPruneError, match="confirm with --model os:getcwd"):
        load_pruned(tmp_path)
    with pytest.raises(ChipPruneError, match="holds a pruned 'os:getcwd', not 'cifar_resnet20'"):
        load_pruned(tmp_path, model="cifar_resnet20")


def test_fewer_calibration_images_warn_and_use_what_exists(tmp_path, capsys):
    tmp = _files(tmp_path)
    assert main(["score", "--model", "cifar_resnet20", "--weights", "none", "--data", str(tmp / "grey"), "--calib-images", "4",
                 "--out", str(tmp_path / "s.safetensors"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "warning: 4 calibration images asked for" in captured.err and "on 1 images" in captured.out


def test_dead_and_huge_activations_give_finite_scores():
    from chipprune.scoring.independence import channel_independence

    maps = torch.zeros(3, 8, 4, 4)
    maps[:, :4] = torch.rand(3, 4, 4, 4) * 1e30  # extremely large activations
    ci = channel_independence(maps)
    assert torch.isfinite(ci).all() and (ci[4:] == 0).all() and (ci[:4] > 0).all()
    assert torch.equal(channel_independence(torch.full((2, 3, 2, 2), 0.0)), torch.zeros(3, dtype=torch.float64))
    # Constant maps: every row equal, rank 1; removing one of C rows lowers the norm by sqrt(HW)(sqrt(C) - sqrt(C-1)).
    const = channel_independence(torch.ones(2, 5, 3, 3))
    assert torch.allclose(const, torch.full((5,), 3.0 * (5**0.5 - 4**0.5), dtype=torch.float64), rtol=1e-7)


def test_unpickling_a_cifar_batch_with_code_is_refused(tmp_path):
    from chipprune.data import open_data

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    with open(root / "test_batch", "wb") as f:
        pickle.dump({"data": EvilPickle(str(tmp_path / "pwned")), "labels": [0]}, f)
    with pytest.raises(ChipPruneError, match="refusing"):
        open_data(tmp_path).split("test", lambda x: x)
    assert not (tmp_path / "pwned").exists()


# --- properties -----------------------------------------------------------------------------------

ratios = st.floats(min_value=0.0, max_value=0.999, allow_nan=False).map(lambda r: round(r, 3))
terms = st.lists(st.tuples(st.lists(ratios, min_size=1, max_size=3), st.integers(1, 40)), min_size=1, max_size=5)


@given(terms)
def test_sparsity_strings_parse_to_their_expansion(parts):
    text = "+".join(f"[{', '.join(repr(r) for r in values)}]*{n}" for values, n in parts)
    assert parse_sparsity(text) == [r for values, n in parts for r in values * n]


@given(st.text(max_size=40))
def test_any_text_either_parses_or_gets_a_clear_error(text):
    try:
        result = parse_sparsity(text)
    except ChipPruneError as exc:
        assert str(exc)
    else:
        assert all(0.0 <= r < 1.0 for r in result)


@pytest.fixture(scope="module")
def resnet20_groups():
    model = load_model("cifar_resnet20", None)[0].eval()
    spec = get_model_spec("cifar_resnet20")
    _, groups, _ = prunable_groups(model, spec)
    return model, spec, groups


@settings(max_examples=6, deadline=None)
@given(st.floats(min_value=0.3, max_value=0.9))
def test_plan_search_lands_near_the_target_and_is_monotone(resnet20_groups, target):
    from chipprune.evaluation.metrics import count_macs

    model, spec, groups = resnet20_groups
    base = count_macs(model, 32)
    plan = make_plan(model, spec, groups, PlanRequest(target_macs=target))
    near = abs(plan.macs / base - target) <= 0.01 * target
    assert near or any("the closest plan found" in n for n in plan.notes)
    tighter = make_plan(model, spec, groups, PlanRequest(target_macs=target * 0.8))
    assert tighter.macs <= plan.macs


def test_wide_rounding_steps_are_evened_out_group_by_group():
    # With widths in steps of 8, one level for all ResNet-56 groups stops at 48.3% of the MACs;
    # moving single groups one step brings the plan within the 1% tolerance.
    from chipprune.evaluation.metrics import count_macs

    model = load_model("cifar_resnet56", None)[0].eval()
    spec = get_model_spec("cifar_resnet56")
    _, groups, _ = prunable_groups(model, spec)
    plan = make_plan(model, spec, groups, PlanRequest(target_macs=0.5, round_to=8))
    assert abs(plan.macs / count_macs(model, 32) - 0.5) <= 0.005
    assert all(keep % 8 == 0 for keep in plan.keep.values())


# --- interruptions --------------------------------------------------------------------------------


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    import errno
    import os

    from chipprune.io.atomic import atomic_write_bytes

    target = tmp_path / "checkpoint.pt"
    atomic_write_bytes(target, b"previous checkpoint")
    real_fdopen = os.fdopen

    class _FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"new checkpoint that does not fit")
    assert target.read_bytes() == b"previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_a_killed_prune_leaves_no_folder(tmp_path):
    import signal
    import subprocess
    import sys

    # SIGKILL while scoring (a real kill at a known point, whatever the machine's speed): nothing is written.
    killed_while_scoring = (
        "import os, signal, sys\n"
        "import chipprune.scoring.criteria as c\n"
        "c.Criterion.score = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from chipprune.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", killed_while_scoring, "prune", "--model", "cifar_resnet20", "--weights", "none",
                           "--no-eval", "--sparsity", "0.5", "--out", str(out), "--quiet"], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()

    # SIGKILL between the files of the folder: they were being written into a hidden sibling, so --out does not exist.
    killed_while_saving = killed_while_scoring.replace(
        "import chipprune.scoring.criteria as c\n"
        "c.Criterion.score = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n",
        "import chipprune.io.pruned as p\n"
        "p.write_json = lambda path, obj: os.kill(os.getpid(), signal.SIGKILL)\n",
    )
    # (64 calibration images: l1 needs none, and BatchNorm re-estimation on the default 640 is slow.)
    proc = subprocess.run([sys.executable, "-c", killed_while_saving, "prune", "--model", "cifar_resnet20", "--weights", "none",
                           "--no-eval", "--sparsity", "0.5", "--criterion", "l1", "--calib-images", "64", "--out", str(out), "--quiet"],
                          capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and any(p.name.endswith(".new") for p in tmp_path.iterdir())
    # The next run into that --out finds no folder to refuse, and removes the unfinished one.
    assert main(["prune", "--model", "cifar_resnet20", "--weights", "none", "--no-eval", "--sparsity", "0.5", "--criterion", "l1",
                 "--calib-images", "64", "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]


def test_fewer_calibration_images_than_processes_is_refused(monkeypatch):
    # Under torchrun a process without images would skip the collective sums the others wait in.
    import chipprune.data.calibration as calibration

    monkeypatch.setattr(calibration, "world", lambda: (1, 2))
    spec = get_model_spec("cifar_resnet20")
    with pytest.raises(ChipPruneError, match="1 calibration images cannot be shared among 2 processes"):
        calibration.Calibration(images=1, batch_size=1).loader(spec)
