import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from chipprune.training import RECIPES, build_scheduler, read_checkpoint

TESTS = Path(__file__).resolve().parent


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """The recipe's schedule by its definition: linear warm-up to base, then cosine to 0."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def test_recipe_schedule_matches_its_definition():
    recipe = RECIPES["chip-cifar"]
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    steps_per_epoch, epochs = 7, 12
    total, warmup = steps_per_epoch * epochs, int(recipe.warmup_epochs * steps_per_epoch)
    sched = build_scheduler(opt, total, warmup)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [lr_at(s, total, warmup, recipe.lr) for s in range(total)]
    assert np.allclose(seen, expected, rtol=1e-9, atol=1e-15)
    assert seen[0] == pytest.approx(recipe.lr / warmup) and seen[warmup - 1] == pytest.approx(recipe.lr)
    assert max(seen) == pytest.approx(recipe.lr) and seen[-1] < 0.01 * recipe.lr  # cosine down to ~0
    assert RECIPES["chip-cifar"].weight_decay == 0.005 and RECIPES["chip-imagenet"].momentum == 0.99
    assert RECIPES["chip-imagenet"].label_smoothing == 0.1


def _image_folder(root: Path, n_train: int, size: int = 16, n_test: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, cls in enumerate(("a", "b")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range((n + 1 - c) // 2):
                img = rng.integers(0, 128, (size, size, 3), dtype=np.uint8) + 100 * c
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.png")
    return root


def _train_cmd(data: Path, out: Path, *extra: str, module: str = "chipprune") -> list[str]:
    """``python`` arguments of a small training run (``[2:]``: the CLI's, for ``main`` in this process).
    ``module="steadyclock"`` runs it on the tests' steady clock (tests/steadyclock.py)."""
    return [
        "-m", module, "--debug", "train", "--model", "custom_nets:plain_net", "--image-size", "16",
        "--data", str(data), "--out", str(out), "--quiet", "--val-fraction", "0", "--lr", "0.05",
        "--warmup-epochs", "1", *extra,
    ]


def _env() -> dict:
    # tests/ first (custom_nets, steadyclock), then whatever PYTHONPATH the tests themselves run with.
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


# Runs the CLI, killing the process with SIGKILL right after it checkpoints epoch 2, step 5: a real
# kill at a known point, whatever the machine's speed.
_KILLED_AFTER_A_CHECKPOINT = """
import os, signal, sys
import chipprune.training.loop as loop
save = loop._Trainer.save_checkpoint
def save_then_die(self, epoch, step, sums=None):
    save(self, epoch, step, sums)
    if (epoch, step) == (1, 5):
        os.kill(os.getpid(), signal.SIGKILL)
loop._Trainer.save_checkpoint = save_then_die
from chipprune.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_run_resumes_at_the_right_step_and_matches_an_uninterrupted_run(tmp_path, capsys, monkeypatch):
    from chipprune.cli import main

    # Only the killed run needs a process of its own; the uninterrupted run and the resumed one run
    # in this one (on the steady clock), each a fresh CLI run that reads the checkpoint from disk.
    # 96 images: 12 steps an epoch, so the kill after epoch 2, step 5 lands mid-epoch (the kill is
    # placed exactly; it no longer has to be caught by polling a long run).
    monkeypatch.chdir(tmp_path)
    data = _image_folder(tmp_path / "data", n_train=96)
    args = ["--epochs", "3", "--train-batch-size", "8", "--checkpoint-every", "1"]
    reference = tmp_path / "reference"
    assert main(_train_cmd(data, reference, *args)[2:]) == 0

    out = tmp_path / "interrupted"
    cli_args = _train_cmd(data, out, *args)[2:]  # without "-m chipprune"
    proc = subprocess.run([sys.executable, "-c", _KILLED_AFTER_A_CHECKPOINT, *cli_args], env=_env(), cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL
    killed_at = read_checkpoint(out / "checkpoint.pt")
    assert (killed_at["epoch"], killed_at["step_in_epoch"]) == (1, 5) and not (out / "model.safetensors").exists()

    capsys.readouterr()
    assert main(_train_cmd(data, out, *args, "--resume")[2:]) == 0
    assert f"epoch {killed_at['epoch'] + 1}, step {killed_at['step_in_epoch']}" in capsys.readouterr().out
    final, expected = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert all(torch.allclose(final[k], expected[k], atol=1e-6) for k in expected)
    history = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # The interrupted epoch's training loss and accuracy cover all its steps, as in the uninterrupted run.
    uninterrupted = json.loads((reference / "metrics.json").read_text())
    for got, want in zip(history, uninterrupted):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-4) and got["train_top1"] == pytest.approx(want["train_top1"])


def test_two_processes_under_torchrun_match_one_process(tmp_path, monkeypatch):
    from chipprune.cli import main

    # An odd number of test images: no image may be counted twice to even out the two shares. With a
    # validation split the best epoch's weights are reloaded at the end, which must not hang.
    # The one-process run runs in this process; both on the steady clock.
    monkeypatch.chdir(tmp_path)
    data = _image_folder(tmp_path / "data", n_train=64, n_test=9)
    args = ["--epochs", "2", "--train-batch-size", "16", "--val-fraction", "0.25", "--checkpoint-every", "1"]
    single, double = tmp_path / "one", tmp_path / "two"
    assert main(_train_cmd(data, single, *args)[2:]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    subprocess.run([*torchrun, *_train_cmd(data, double, *args, module="steadyclock")], check=True, env=_env(), cwd=tmp_path,
                   timeout=600)
    a, b = load_file(str(single / "model.safetensors")), load_file(str(double / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (single, double))
    assert rb["finetune"]["processes"] == 2 and ra["finetune"]["processes"] == 1
    assert ra["test_images"] == rb["test_images"] == 9
    assert ra["finetune"]["selected_epoch"] == rb["finetune"]["selected_epoch"]
    assert ra["top1_after"] == pytest.approx(rb["top1_after"])
    # Training figures summed over both processes count every step once (checkpoints in between).
    ha, hb = (json.loads((d / "metrics.json").read_text()) for d in (single, double))
    assert [h["train_loss"] for h in ha] == pytest.approx([h["train_loss"] for h in hb], rel=1e-4)
    assert [h["train_top1"] for h in ha] == pytest.approx([h["train_top1"] for h in hb])


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path, capsys):
    from chipprune.cli import main

    data = _image_folder(tmp_path / "data", n_train=32)
    out = tmp_path / "run"
    base = _train_cmd(data, out, "--train-batch-size", "16")[3:]  # without "-m chipprune --debug"
    assert main([*base, "--epochs", "1"]) == 0
    assert json.loads((out / "report.json").read_text())["data_path"] == str(data.resolve())  # eval's default data
    assert main([*base, "--epochs", "3", "--resume"]) == 2
    assert "epochs 1 -> 3" in capsys.readouterr().err
    assert main([*base, "--epochs", "1", "--seed", "5", "--resume"]) == 2
    assert "seed 0 -> 5" in capsys.readouterr().err
    assert main([*base, "--epochs", "1", "--resume"]) == 0  # the same settings resume (here: nothing left to do)


def test_finetune_writes_a_loadable_folder_and_report(tmp_path, small_cifar):
    from chipprune import load_pruned
    from chipprune.cli import main

    # 130 training images (more than the 128 asked for) and 30 to test on: the run evaluates four times.
    out = tmp_path / "run"
    args = ["run", "--model", "cifar_resnet20", "--weights", "none", "--sparsity", "0.5", "--data", small_cifar, "--calib-images", "64",
            "--batch-size", "32", "--epochs", "1", "--train-batch-size", "64", "--limit-train-images", "128",
            "--out", str(out), "--quiet"]
    assert main(args) == 0
    fine = out / "finetuned"
    report = json.loads((fine / "report.json").read_text())
    assert report["params_after"] < report["params_before"] and report["finetune"]["val_images"] == 13  # 10% of the 128 training images: --limit-train-images limits validation too
    assert {"top1_after", "top5_after", "latency_ms", "macs_after"} <= set(report)
    assert (fine / "report.md").read_text().startswith("# chipprune report: cifar_resnet20")
    assert (fine / "training_curve.png").is_file() and (fine / "channels.png").is_file()
    assert (fine / "metrics.csv").read_text().splitlines()[0].startswith("epoch")
    model = load_pruned(fine)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_scoring_under_torchrun_splits_images_and_sums_scores(tmp_path, monkeypatch):
    from chipprune.cli import main

    monkeypatch.chdir(tmp_path)
    data = _image_folder(tmp_path / "data", n_train=32)
    cmd = ["-m", "chipprune", "--debug", "score", "--model", "custom_nets:plain_net", "--weights", "none",
           "--image-size", "16", "--data", str(data), "--calib-images", "32", "--batch-size", "8", "--quiet"]
    assert main([*cmd[2:], "--out", str(tmp_path / "one.safetensors")]) == 0  # one process: this one
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    subprocess.run([*torchrun, *cmd, "--out", str(tmp_path / "two.safetensors")], check=True, env=_env(), cwd=tmp_path, timeout=600)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["images"] == two["images"] == 32
    for group in one["groups"]:
        assert np.allclose(one["groups"][group]["scores"], two["groups"][group]["scores"], rtol=1e-9)


def test_run_under_torchrun_prunes_once_then_finetunes_together(tmp_path):
    data = _image_folder(tmp_path / "data", n_train=64)
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    # On the steady clock (the fine-tuned report's latency, timed for real, takes seconds).
    cmd = ["-m", "steadyclock", "run", "--model", "custom_nets:plain_net", "--weights", "none", "--image-size", "16",
           "--data", str(data), "--sparsity", "0.5", "--calib-images", "16", "--batch-size", "8", "--epochs", "1",
           "--train-batch-size", "16", "--val-fraction", "0", "--out", str(out), "--quiet"]
    result = subprocess.run([*torchrun, *cmd], env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(f"saved: {out / 'pruned'}/") == 1  # pruned by process 0 alone
    assert json.loads((out / "finetuned" / "report.json").read_text())["finetune"]["processes"] == 2


def test_compile_auto_compiles_only_long_runs_on_cuda():
    from chipprune.training.loop import COMPILE_PAYS_STEPS, compile_mode

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert compile_mode("auto", cuda, COMPILE_PAYS_STEPS) == "reduce-overhead"
    assert compile_mode("auto", cuda, COMPILE_PAYS_STEPS - 1) is None  # compiling would cost more than it saves
    assert compile_mode("auto", cpu, 10**6) is None
    assert compile_mode("off", cuda, 10**6) is None
    assert compile_mode("default", cpu, 1) == "default"  # asked for by name: done anywhere


def test_the_short_budget_preset_is_the_measured_setting():
    short = RECIPES["short-distill"]
    cifar = RECIPES["chip-cifar"]
    assert (short.epochs, short.warmup_epochs, short.distill_weight, short.distill_temperature) == (2, 0, 0.5, 4.0)
    assert (short.lr, short.momentum, short.weight_decay, short.batch_size) == (cifar.lr, cifar.momentum, cifar.weight_decay, cifar.batch_size)
