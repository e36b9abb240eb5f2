"""timm models as ``timm:NAME``: built without downloading, pruned at 30% with CHIP, reloaded from the
pruned folder to identical outputs (no confirmation asked: they are not a user's code), exported to
ONNX, pruned from the command line; unknown names suggest close ones."""

from __future__ import annotations

import sys

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm models need the 'timm' extra (pip install 'chipprune[timm]')")

import chipprune  # noqa: E402
from chipprune.cli import main  # noqa: E402
from chipprune.errors import ChipPruneError  # noqa: E402
from chipprune.io.onnx import export_onnx  # noqa: E402
from chipprune.models import timm_models  # noqa: E402
from chipprune.models.user import is_user_factory  # noqa: E402

SIZE = 64
# poolformer_s12: its layer scale needs chipprune's ScalePruner (timm_models.py).
FAMILIES = ["resnet18", "efficientnet_b0", "convnext_atto", "regnetx_002", "mobilenetv3_small_050", "poolformer_s12"]


def _pruned(name: str):
    torch.manual_seed(0)
    model, spec = chipprune.load_model(f"timm:{name}", None, image_size=SIZE)
    result = chipprune.prune(model, spec, "0.3", calibration=[torch.rand(2, 3, SIZE, SIZE)], progress=False)
    return result, spec


@pytest.mark.parametrize("name", FAMILIES)
def test_timm_family_prunes_and_reloads_identically(name, tmp_path):
    result, spec = _pruned(name)
    assert spec.family == "timm" and spec.task == "classification" and spec.image_size == SIZE
    assert result.report.macs_after < 0.8 * result.report.macs_before
    folder = chipprune.save_pruned(result, tmp_path / "pruned")
    reloaded = chipprune.load_pruned(folder)  # no model= needed: timm:NAME is not a user's function
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(reloaded(x), result.model(x))
    if name == "resnet18":
        assert export_onnx(result.model, spec, tmp_path / "model.onnx") < 1e-3
        assert (tmp_path / "model.onnx").is_file()


def test_timm_spec_comes_from_the_models_config():
    spec = chipprune.get_model_spec("timm:convnext_atto")
    cfg = timm.create_model("convnext_atto", pretrained=False).pretrained_cfg
    assert spec.name == "timm:convnext_atto" and spec.family == "timm"
    assert spec.image_size == cfg["input_size"][-1] and spec.mean == tuple(cfg["mean"]) and spec.std == tuple(cfg["std"])
    assert spec.num_classes == 1000
    model, _ = chipprune.load_model("timm:convnext_atto", None, num_classes=7)
    assert model.num_classes == 7


def test_timm_names_are_not_user_factories_nor_listed():
    assert not is_user_factory("timm:resnet18") and is_user_factory("mypackage.nets:build")
    assert not any(n.startswith("timm:") for n in chipprune.list_models())


def test_unknown_timm_name_suggests_close_ones():
    with pytest.raises(ChipPruneError, match="unknown timm model 'resnet181'.*timm:resnet18"):
        chipprune.get_model_spec("timm:resnet181")


@pytest.mark.parametrize("name", ["res2net50_26w_4s", "cspdarknet53", "ghostnet_100", "nfnet_l0"])
def test_unsupported_timm_families_are_refused_in_one_line(name):
    model, spec = chipprune.load_model(f"timm:{name}", None, image_size=SIZE)
    assert spec.unsupported
    with pytest.raises(ChipPruneError, match="cannot be pruned"):
        chipprune.prune(model, spec, "0.3", calibration=[torch.rand(2, 3, SIZE, SIZE)], progress=False)


def test_timm_missing_says_which_extra(monkeypatch):
    timm_models.spec_for.cache_clear()
    timm_models._timm_names.cache_clear()
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    try:
        with pytest.raises(ChipPruneError, match=r"pip install 'chipprune\[timm\]'"):
            chipprune.get_model_spec("timm:resnet18")
    finally:
        timm_models.spec_for.cache_clear()
        timm_models._timm_names.cache_clear()


def test_cli_prunes_a_timm_model(capsys):
    argv = ["prune", "--model", "timm:resnet18", "--weights", "none", "--image-size", "64", "--sparsity", "0.3",
            "--calib-images", "4", "--batch-size", "2", "--dry-run", "--quiet"]
    assert main(argv) == 0
    assert "timm:resnet18" in capsys.readouterr().out
