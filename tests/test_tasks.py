"""Detection and segmentation models: their output layers are kept, the coupling of their necks is
right (pruning channels that carry nothing leaves the heads' outputs unchanged), they prune from
unlabelled images, reload identically without pickle, and export; commands that need a classifier
refuse them in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.utils._pytree as pytree
from PIL import Image

import chipprune
from chipprune.cli import main
from chipprune.data.sources import open_data
from chipprune.errors import ChipPruneError
from chipprune.io.onnx import export_onnx
from chipprune.scoring.streaming import GroupScores
from chipprune.surgery.apply import remove_channels
from chipprune.surgery.groups import prunable_groups

DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"


@pytest.fixture(scope="module")
def unlabelled_images(tmp_path_factory) -> Path:
    """Six noise photos of different sizes in a folder and a subfolder, without labels."""
    root = tmp_path_factory.mktemp("unlabelled")
    (root / "more").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        pixels = rng.integers(0, 256, (90 + 10 * i, 120, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / ("more" if i % 2 else ".") / f"photo{i}.png")
    return root


def test_the_output_layers_of_a_detector_and_a_segmenter_are_their_prediction_layers():
    torch.manual_seed(0)
    model, spec = chipprune.load_model(DETECTOR, None)
    _, groups, outputs = prunable_groups(model, spec)
    # The region-proposal head's outputs reach the detections only through detached proposals: found all the same.
    assert outputs == ["rpn.head.cls_logits", "rpn.head.bbox_pred", "roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"]
    members = {m for g in groups for m in g.members}
    assert not members & set(outputs)
    # The FPN's lateral convs are added in the top-down path, and its output convs feed one shared head: coupled.
    by_member = {m: g for g in groups for m in g.members}
    assert by_member["backbone.fpn.inner_blocks.0.0"] is by_member["backbone.fpn.inner_blocks.1.0"]
    assert by_member["backbone.fpn.layer_blocks.0.0"] is by_member["backbone.fpn.layer_blocks.1.0"]
    model, spec = chipprune.load_model("lraspp_mobilenet_v3_large", None, image_size=64)
    assert prunable_groups(model, spec)[2] == ["classifier.low_classifier", "classifier.high_classifier"]


def _silence(model: nn.Module, spec, every: int = 4):
    """Zero every ``every``-th channel of every group in all the layers that write it, so it carries
    nothing; returns ``remove_channels``'s arguments that remove exactly those channels."""
    dg, groups, _ = prunable_groups(model, spec)
    modules = dict(model.named_modules())
    keep, scores = {}, {}
    with torch.no_grad():
        for g in groups:
            dead = list(range(0, g.channels, every)) if g.channel_groups == 1 and g.channels >= 2 * every else []
            keep[g.name] = g.channels - len(dead)
            scores[g.name] = GroupScores(g.name, torch.ones(g.channels, dtype=torch.float64).index_fill_(0, torch.tensor(dead, dtype=torch.long), 0.0), [], 1, 1.0)
            if not dead:
                continue
            root = modules[g.name]
            for item in dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, dead):
                layer = item.dep.target.module
                if dg.is_out_channel_pruning_fn(item.dep.handler) and isinstance(layer, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                    layer.weight[item.idxs] = 0
                    if layer.bias is not None:
                        layer.bias[item.idxs] = 0
    return model, dg, groups, keep, scores


@pytest.mark.parametrize("name", [DETECTOR, "lraspp_mobilenet_v3_large"])
def test_removing_channels_that_carry_nothing_leaves_the_outputs_unchanged(name):
    torch.manual_seed(0)
    model, spec = chipprune.load_model(name, None, image_size=96)
    for m in model.modules():  # statistics that make every BatchNorm do something
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    _, _, outputs = prunable_groups(model, spec)
    x = spec.model_input(torch.rand(2, 3, 96, 96))
    modules = dict(model.eval().named_modules())

    def heads_and_outputs():
        caught = []
        hooks = [modules[o].register_forward_hook(lambda _m, _i, out: caught.append(out)) for o in outputs]
        with torch.no_grad():
            out = model(x)
        for h in hooks:
            h.remove()
        return caught, out

    removal = _silence(model, spec)
    heads_before, out_before = heads_and_outputs()
    params = chipprune.evaluation.metrics.count_params(model)
    remove_channels(*removal)
    heads_after, out_after = heads_and_outputs()
    assert chipprune.evaluation.metrics.count_params(model) < 0.8 * params
    # What every prediction layer computes is unchanged. (A detector with random weights scores its
    # boxes almost alike, so the sorted detections may swap near-ties: compared through the heads.)
    assert len(heads_before) == len(heads_after) > 0
    for before, after in zip(heads_before, heads_after):
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert pytree.tree_structure(out_after) == pytree.tree_structure(out_before)
    if name.startswith("lraspp"):
        torch.testing.assert_close(out_after["out"], out_before["out"], rtol=1e-4, atol=1e-5)


def test_a_detector_prunes_from_unlabelled_images_and_reloads_identically(unlabelled_images, tmp_path):
    torch.manual_seed(0)
    model, spec = chipprune.load_model("ssdlite320_mobilenet_v3_large", None)
    calibration = chipprune.Calibration(data=unlabelled_images, images=4, batch_size=2)
    result = chipprune.prune(model, spec, "0.3", calibration=calibration, progress=False)
    report = result.report
    assert report.data.startswith("6 unlabelled images") and report.calibration_images == 4 and report.bn_recalibrated
    assert report.not_measured.startswith("a detection model") and report.top1_before is None
    assert report.macs_after < 0.8 * report.macs_before
    assert result.record["task"] == "detection" and result.record["num_classes"] == 91 and len(result.record["output_layers"]) == 12
    # Saved and loaded without pickle: the same network, the same outputs, in the same form.
    chipprune.save_pruned(result, tmp_path / "ssd")
    loaded = chipprune.load_pruned(tmp_path / "ssd")
    assert chipprune.evaluation.metrics.count_params(loaded) == report.params_after
    x = [torch.rand(3, 100, 130)]
    with torch.no_grad():
        pruned, again = result.model.eval()(x), loaded(x)
    assert pytree.tree_structure(again) == pytree.tree_structure(pruned) and again[0]["boxes"].shape[1:] == (4,)
    for a, b in zip(pytree.tree_leaves(pruned), pytree.tree_leaves(again)):
        assert torch.equal(a, b)


def test_the_cli_prunes_a_segmenter_on_unlabelled_images_and_says_what_it_did_not_measure(unlabelled_images, tmp_path, capsys):
    out = tmp_path / "seg"
    argv = ["prune", "--model", "lraspp_mobilenet_v3_large", "--weights", "none", "--num-classes", "5", "--image-size", "96", "--data",
            str(unlabelled_images), "--sparsity", "0.3", "--calib-images", "4", "--batch-size", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "6 unlabelled images" in printed and "4 calibration images" in printed
    assert "accuracy: not measured (a segmentation model" in printed
    assert json.loads((out / "pruning.json").read_text())["num_classes"] == 5  # rebuilt with 5 classes when loaded
    assert main(["eval", str(out), "--quiet"]) == 0
    assert "accuracy: not measured" in capsys.readouterr().out
    assert main(["finetune", str(out), "--quiet"]) == 2
    assert "trains and measures classifiers" in capsys.readouterr().err


def test_a_pruned_segmenter_exports_to_onnx(tmp_path):
    torch.manual_seed(0)
    model, spec = chipprune.load_model("lraspp_mobilenet_v3_large", None, image_size=64)
    result = chipprune.prune(model, spec, "0.5", calibration=[torch.rand(2, 3, 64, 64)], progress=False)
    assert result.report.not_measured.startswith("a segmentation model")
    assert result.report.macs_after < 0.6 * result.report.macs_before
    diff = export_onnx(result.model, spec, tmp_path / "seg.onnx")
    assert diff < 1e-3 and (tmp_path / "seg.onnx").is_file()


def test_an_unlabelled_folder_calibrates_but_does_not_test(unlabelled_images):
    source = open_data(unlabelled_images)
    assert not source.has_test and source.classes is None
    with pytest.raises(ChipPruneError, match="without labels"):
        source.split("test", lambda img: img)
    torch.manual_seed(0)
    model, spec = chipprune.load_model("cifar_resnet20", None)
    result = chipprune.prune(model, spec, "0.3", calibration=chipprune.Calibration(data=unlabelled_images, images=4, batch_size=2),
                             progress=False)
    assert result.report.calibration_images == 4 and result.report.top1_before is None
    assert result.report.not_measured.startswith("no labelled test images")


def test_commands_that_need_a_classifier_refuse_a_segmenter_before_any_work(tmp_path, capsys):
    assert main(["run", "--model", "lraspp_mobilenet_v3_large", "--weights", "none", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "trains and measures classifiers" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


class _Upsampler(nn.Module):
    """A head whose last layer is a transposed conv (as Mask R-CNN's and Keypoint R-CNN's are)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 16, 2, stride=2)
        self.logits = nn.ConvTranspose2d(16, 4, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(torch.relu(self.up(self.body(x))))


def test_a_group_read_only_by_a_transposed_conv_is_scored_and_a_transposed_output_layer_kept():
    # Mask R-CNN's mask head: a conv whose only reader is a transposed conv had no map to score.
    torch.manual_seed(0)
    model = _Upsampler()
    spec = chipprune.custom_spec("upsampler", torch.zeros(1, 3, 8, 8), factory=_Upsampler, task="segmentation")
    _, groups, outputs = prunable_groups(model, spec)
    assert outputs == ["logits"]
    result = chipprune.prune(model, spec, "0.5", calibration=[torch.rand(2, 3, 8, 8)], progress=False)
    # Transposed convs read pruned channels; their own outputs are not pruned (they root no group).
    assert model.body[0].out_channels == 8 and model.up.in_channels == 8 and model.up.out_channels == 16
    assert model.logits.out_channels == 4 and [g["group"] for g in result.record["groups"]] == ["body.0"]
    assert result.record["groups"][0]["scored_maps"] == ["up:input"]


def test_onnx_agreement_is_judged_against_the_outputs_scale_and_ignores_the_order_of_rows():
    from chipprune.io.onnx import _close, _rows_sorted

    # A small logit beside large ones carries the large ones' rounding: judged at the output's scale.
    assert _close(np.array([1000.0, 0.01]), np.array([1000.0, 0.0]), 1e-4, 1e-3)
    assert not _close(np.array([1.0, 2.0]), np.array([1.0, 2.1]), 1e-4, 1e-3)
    boxes = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, 1.0, 2.0, 2.0]])
    assert np.array_equal(_rows_sorted(boxes), _rows_sorted(boxes[::-1]))
    assert not np.array_equal(_rows_sorted(boxes), _rows_sorted(boxes + [0, 0, 0, 1]))
