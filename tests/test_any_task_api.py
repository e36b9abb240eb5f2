"""The task-agnostic Python API: any nn.Module with its example input, calibration from the user's
own inputs, the user's metric and loss, save and load through the spec, the sweep for any model;
and the worked example (examples/own_detector.py) runs its steps."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import chipprune
from chipprune.errors import ChipPruneError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import own_detector  # noqa: E402


class TwoInputs(nn.Module):
    """A model that takes a dict (an image and a mask) and returns a tuple: nothing like a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.seg = nn.Conv2d(16, 3, 1)
        self.score = nn.Linear(16, 1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.b(self.a(torch.cat([inputs["image"], inputs["mask"]], dim=1)))
        return self.seg(x), self.score(x.mean((2, 3)))


def _inputs(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 3, 16, 16, generator=g), "mask": torch.rand(n, 1, 16, 16, generator=g)}


def test_any_module_prunes_from_its_own_inputs_with_its_own_metric(tmp_path):
    torch.manual_seed(0)
    model = TwoInputs()
    spec = chipprune.custom_spec("two-inputs", _inputs(1, 0), factory=TwoInputs)
    held_out = _inputs(8, 99)
    calls = []

    def evaluate(m: nn.Module) -> float:
        calls.append(m.training)
        with torch.no_grad():
            return float(m(held_out)[0].mean())

    result = chipprune.prune(model, spec, "0.5", calibration=[_inputs(4, 1), _inputs(4, 2)], evaluate=evaluate, progress=False)
    r = result.report
    assert calls == [False, False]  # before and after, in eval mode
    assert r.metric_before is not None and r.metric_after is not None and r.not_measured is None
    assert r.calibration_images == 8 and r.bn_recalibrated and r.bn_recalibration_images == 8
    assert model.a[0].out_channels == 8 and model.seg.out_channels == 3 and model.score.out_features == 1  # outputs kept
    assert result.record["output_layers"] == ["seg", "score"] and result.record["family"] == "custom_spec"
    chipprune.save_pruned(result, tmp_path / "p")
    loaded = chipprune.load_pruned(tmp_path / "p", spec=spec)
    with torch.no_grad():
        for a, b in zip(loaded(held_out), model(held_out)):
            assert torch.equal(a, b)
    with pytest.raises(ChipPruneError, match="custom_spec"):
        chipprune.load_pruned(tmp_path / "p")  # the name alone cannot rebuild it
    with pytest.raises(ChipPruneError, match="no factory"):
        chipprune.load_pruned(tmp_path / "p", spec=chipprune.custom_spec("two-inputs", _inputs(1, 0)))


def test_bad_calibration_and_metrics_get_clear_errors():
    spec = chipprune.custom_spec("two-inputs", _inputs(1, 0))
    with pytest.raises(ChipPruneError, match="read more than once"):
        chipprune.prune(TwoInputs(), spec, "0.5", calibration=(x for x in [_inputs(2, 1)]), progress=False)
    with pytest.raises(ChipPruneError, match="must return a number"):
        chipprune.prune(TwoInputs(), spec, "0.5", calibration=[_inputs(2, 1)], evaluate=lambda m: "good", progress=False)
    with pytest.raises(ChipPruneError, match="unknown task"):
        chipprune.custom_spec("x", torch.zeros(1, 3, 8, 8), task="tracking")


def test_finetune_module_lowers_the_users_loss_and_stops_on_nan():
    torch.manual_seed(0)
    model = TwoInputs()
    batches = [(x, 2.0 + 4.0 * x["image"].mean((1, 2, 3))[:, None]) for x in (_inputs(8, i) for i in range(4))]

    def loss(m: nn.Module, batch) -> torch.Tensor:
        inputs, target = batch
        return nn.functional.mse_loss(m(inputs)[1], target)

    losses = chipprune.finetune_module(model, batches, loss, epochs=5, lr=0.05, progress=False)
    assert len(losses) == 5 and losses[-1] < 0.5 * losses[0] and not model.training
    with pytest.raises(ChipPruneError, match="became nan"):
        chipprune.finetune_module(model, batches, lambda m, b: loss(m, b) * float("nan"), progress=False)


def test_sweep_any_prunes_copies_to_each_level_and_leaves_the_model_alone(tmp_path):
    torch.manual_seed(0)
    model = TwoInputs()
    spec = chipprune.custom_spec("two-inputs", _inputs(1, 0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = []
    points = chipprune.sweep_any(model, spec, [_inputs(4, 1)], lambda m: float(m(_inputs(2, 5))[1].sum()),
                                 levels=(0.3, 0.7), finetune=tuned.append, plot=tmp_path / "sweep.png", progress=False)
    assert [p.target for p in points] == [1.0, 0.7, 0.3] and len(tuned) == 2
    assert points[0].macs > points[1].macs > points[2].macs and points[0].change == 0.0
    assert abs(points[2].macs / points[0].macs - 0.3) < 0.05
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert (tmp_path / "sweep.png").stat().st_size > 0
    assert "your evaluate function's value" in chipprune.sweep_table(points)
    with pytest.raises(ChipPruneError, match="between 0 and 1"):
        chipprune.sweep_any(model, spec, [_inputs(4, 1)], lambda m: 0.0, levels=(1.5,), progress=False)


@pytest.mark.slow  # every step of the doc's example end to end; the API it uses is tested above
def test_the_worked_example_runs_every_step(capsys):
    out = own_detector.main(quick=True)
    assert out["same"] is True
    r = out["result"].report
    assert r.metric_before is not None and r.macs_after < 0.5 * r.macs_before
    assert [p.target for p in out["points"]] == [1.0, 0.7, 0.5, 0.3, 0.15]
    printed = capsys.readouterr().out
    assert "saved and reloaded: outputs identical: True" in printed and "hit rate" in printed
