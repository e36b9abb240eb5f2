import json
import subprocess
import sys
from pathlib import Path

import pytest

from chipprune.cli import main


def test_models_lists_cifar_and_torchvision(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "cifar_resnet56" in out and "resnet50" in out and "[0.]+[0.15]*2+[0.4]*27" in out


def test_default_job_end_to_end(default_job, capsys):
    """The README's first command: ResNet-56, paper setting, bundled weights and data, offline (run
    once for the session by conftest's ``default_job``)."""
    assert default_job.exit_code == 0
    out, folder = default_job.stdout, default_job.out
    report = json.loads((folder / "report.json").read_text())
    for key in ("params_before", "params_after", "macs_before", "macs_after"):
        assert isinstance(report[key], int)
    assert report["params_before"] == 853_018 and report["macs_before"] == 125_485_696
    assert report["params_after"] < 0.6 * report["params_before"]
    assert report["top1_before"] == pytest.approx(92.6)  # the 1,000 lossless test images
    assert 10.0 <= report["top1_after"] <= report["top1_before"]
    assert report["bn_recalibrated"] is True and report["calibration_images"] == 640
    assert "top1 (%)" in out and "BatchNorm statistics re-estimated" in out
    assert main(["eval", str(folder), "--quiet"]) == 0
    assert f"top-1 {report['top1_after']:.2f}%" in capsys.readouterr().out


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_criteria_without_a_split_half_correlation_write_strict_json(tmp_path, capsys):
    out = tmp_path / "l1"
    args = ["prune", "--model", "cifar_resnet20", "--weights", "none", "--criterion", "l1", "--sparsity", "0.3",
            "--no-eval", "--out", str(out), "--quiet", "-v"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "split-half rho" in table and "nan" not in table  # shown as '-': not computed
    record = _strict_json(out / "pruning.json")
    assert all(g["split_half_spearman"] is None for g in record["groups"])
    _strict_json(out / "report.json")


def test_ignored_layers_work_with_a_paper_string(capsys):
    assert main(["prune", "--ignore", "layer1.0.conv1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "note: layer1.0 inner conv: not pruned (ignored)" in out and "layer1.0.conv1 " not in out


def _ten_images(root: Path) -> Path:
    """An ImageFolder of ten classes with one 32x32 image each, in train/ and in test/."""
    import numpy as np
    from PIL import Image

    for split in ("train", "test"):
        for c in range(10):
            (root / split / f"c{c}").mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), 20 * c, dtype=np.uint8)).save(root / split / f"c{c}" / "0.png")
    return root


def test_eval_defaults_to_the_data_the_folder_was_pruned_with(tmp_path, capsys):
    _ten_images(tmp_path / "data")
    out = tmp_path / "pruned"
    assert main(["prune", "--model", "cifar_resnet20", "--weights", "none", "--sparsity", "0.3", "--data", str(tmp_path / "data"),
                 "--calib-images", "8", "--batch-size", "8", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--quiet"]) == 0
    assert "on 10 test images of" in capsys.readouterr().out  # not the bundled sample's 1000


def test_a_model_with_more_classes_than_the_data_gets_a_warning(tmp_path, capsys):
    # Ten test images rather than the bundled sample's 1,000: the warning is about the classes, and
    # the run evaluates three times.
    data = _ten_images(tmp_path / "data")
    assert main(["prune", "--model", "cifar_resnet20", "--weights", "none", "--num-classes", "12", "--sparsity", "0.3",
                 "--data", str(data), "--calib-images", "8", "--batch-size", "8", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "has 10 classes, the model predicts 12" in capsys.readouterr().err


def test_score_writes_scores(tmp_path, capsys):
    out = tmp_path / "s.safetensors"
    args = ["score", "--model", "cifar_resnet20", "--weights", "none", "--calib-images", "32", "--batch-size", "16"]
    assert main(args + ["--out", str(out), "--quiet"]) == 0
    scores = json.loads(out.with_suffix(".json").read_text())
    assert scores["images"] == 32 and len(scores["groups"]["layer1.0.conv1"]["scores"]) == 16
    assert "layer3.0.conv2" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["prune", "--sparsity", "[0.4]*2"], "needs 30"),
        (["prune", "--sparsity", "[0.4"], "cannot read term"),
        (["prune", "--model", "resnet5"], "unknown model"),
        (["prune", "--weights", "/nonexistent.pt"], "weights file not found"),
        (["prune", "--data", "/nonexistent"], "data path not found"),
    ],
)
def test_bad_input_gives_a_message(args, message, capsys):
    assert main([*args, "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_errors_print_no_traceback_from_the_console_entry():
    proc = subprocess.run(
        [sys.executable, "-m", "chipprune", "prune", "--sparsity", "[0.4]*2"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("chipprune: error: sparsity '[0.4]*2' has 2 entries")
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    assert scope["ci"].shape == (16,) and (tmp_path / "out" / "pruning.json").is_file()
