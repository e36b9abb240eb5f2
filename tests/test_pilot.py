import json
from statistics import NormalDist

import pytest
import torch

from chipprune import Calibration, ChipPruneError, load_model
from chipprune.cli import main
from chipprune.evaluation.latency import Comparison
from chipprune.pilot import PilotSettings, paired_drop_interval, recommend, run_pilot, sensitivity, wilson_interval
from chipprune.results import PilotLevel


def test_wilson_interval_known_answers():
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(100 * 1.96**2 / (10 + 1.96**2), rel=1e-3)
    low, high = wilson_interval(90, 100)
    assert (low, high) == pytest.approx((82.56, 94.48), abs=0.01)  # the published Wilson interval
    # Symmetry: k right out of n mirrors n - k right.
    a, b = wilson_interval(17, 40, 0.9), wilson_interval(23, 40, 0.9)
    assert a[0] == pytest.approx(100 - b[1]) and a[1] == pytest.approx(100 - b[0])


def test_paired_drop_interval():
    base = torch.ones(100, dtype=torch.bool)
    pruned = base.clone()
    pruned[:10] = False  # ten images the pruned model gets wrong
    drop, low, high = paired_drop_interval(base, pruned)
    sd, z = (0.1 * 0.9 * 100 / 99) ** 0.5, NormalDist().inv_cdf(0.975)
    assert drop == pytest.approx(10.0) and (low, high) == pytest.approx((10 - 100 * z * sd / 10, 10 + 100 * z * sd / 10))
    same = paired_drop_interval(base, base.clone())
    assert same == (0.0, 0.0, 0.0)  # identical predictions: no drop, no doubt


def _level(target, macs, drop_high):
    timing = Comparison(2.0, 1.0, 2.0, 2.0, 2.0, 3, "cpu")
    return PilotLevel(target, 1, macs, 90.0, 89.0, 91.0, drop_high - 0.5, drop_high - 1.0, drop_high, 0, timing, timing)


def test_recommendation_rule():
    levels = [_level(0.8, 80, 0.3), _level(0.65, 65, 0.9), _level(0.5, 50, 1.4), _level(0.35, 35, 6.0)]
    assert recommend(levels, max_drop=1.0).target == 0.65
    assert recommend(levels, max_drop=2.0).target == 0.5
    assert recommend(levels, max_drop=0.1) is None


def test_pilot_scores_once_levels_are_monotone_and_a_rerun_resumes(tmp_path, monkeypatch, small_cifar):
    import chipprune.pilot.sweep as sweep
    import chipprune.scoring.criteria as criteria

    calls = {"score": 0, "prune": 0}
    real_score, real_prune = criteria.score_groups, sweep.apply_plan

    def counting_score(*a, **k):
        calls["score"] += 1
        return real_score(*a, **k)

    def counting_prune(*a, **k):
        calls["prune"] += 1
        return real_prune(*a, **k)

    monkeypatch.setattr(criteria, "score_groups", counting_score)
    monkeypatch.setattr(sweep, "apply_plan", counting_prune)
    torch.manual_seed(0)
    model, spec = load_model("cifar_resnet20", None)
    calib = Calibration(images=64, batch_size=32)
    settings = PilotSettings(levels=(0.5, 0.8, 0.65))
    report = run_pilot(model, spec, small_cifar, tmp_path, settings, calibration=calib, progress=False)
    assert calls == {"score": 1, "prune": 3}  # scores computed once, reused by every level
    macs = [lv.macs for lv in report.levels]
    assert [lv.target for lv in report.levels] == [0.8, 0.65, 0.5] and macs == sorted(macs, reverse=True)
    assert all(abs(lv.macs / report.baseline.macs - lv.target) < 0.01 for lv in report.levels)
    assert {"pilot.json", "pilot.md", "pilot.png", "scores.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    page = (tmp_path / "pilot.md").read_text()
    assert "## Recommendation" in page and "latency b=1" in page and "latency b=64" in page
    # Each level is timed against the original in the same rounds: fewer MACs, faster (on the tests' steady clock).
    assert all(lv.throughput.after_ms > lv.latency.after_ms > 0 and lv.latency.speedup > 1 for lv in report.levels)
    assert report.baseline.latency_ms == report.levels[0].latency.before_ms
    saved = json.loads((tmp_path / "pilot.json").read_text())
    assert saved["levels"][0]["latency"]["speedup"] == report.levels[0].latency.speedup

    (tmp_path / "levels" / "macs-0.650.json").unlink()  # as if interrupted before this level finished
    again = run_pilot(model, spec, small_cifar, tmp_path, settings, calibration=calib, progress=False)
    assert calls == {"score": 1, "prune": 4}  # scores reloaded, only the missing level redone
    assert again.levels[0] == report.levels[0]

    # Results of other settings are never mixed in: other weights, another rounding or criterion are refused.
    with pytest.raises(ChipPruneError, match=r"other settings \(round_to 1 -> 8\)"):
        run_pilot(model, spec, small_cifar, tmp_path, PilotSettings(levels=(0.5,), round_to=8), calibration=calib, progress=False)
    with pytest.raises(ChipPruneError, match=r"criterion 'chip' -> 'l1'"):
        run_pilot(model, spec, small_cifar, tmp_path, PilotSettings(levels=(0.5,), criterion="l1"), calibration=calib, progress=False)
    with torch.no_grad():
        model.conv1.weight.mul_(1.01)
    with pytest.raises(ChipPruneError, match="other settings \\(the model's weights\\)"):
        run_pilot(model, spec, small_cifar, tmp_path, PilotSettings(levels=(0.5,)), calibration=calib, progress=False)
    assert calls == {"score": 1, "prune": 4}


@pytest.mark.parametrize("criterion", ["l1", "random"])
def test_pilot_runs_with_criteria_that_need_no_images(criterion, tmp_path, capsys, small_cifar):
    out = tmp_path / "pilot"
    assert main(["pilot", "--model", "cifar_resnet20", "--weights", "none", "--criterion", criterion, "--levels", "0.8",
                 "--calib-images", "32", "--data", small_cifar, "--out", str(out), "--quiet"]) == 0
    assert f"Channels ranked by {criterion.upper()}" in (out / "pilot.md").read_text()
    assert json.loads((out / "settings.json").read_text())["criterion"] == criterion
    assert "recommendation:" in capsys.readouterr().out


def test_pilot_settings_are_checked():
    for bad in [dict(levels=()), dict(levels=(1.2,)), dict(confidence=1.0), dict(round_to=0), dict(criterion="magic")]:
        with pytest.raises(ChipPruneError):
            PilotSettings(**bad)


def test_sensitivity_suggests_a_plan_prune_accepts(tmp_path, small_cifar):
    model, spec = load_model("cifar_resnet20", "none")
    result = sensitivity(model, spec, small_cifar, tmp_path, ratios=[0.5], calibration=Calibration(images=32, batch_size=32),
                               max_drop=100.0, progress=False)
    assert len(result["drops"]) == 12 and all("0.5" in d for d in result["drops"].values())
    plan = json.loads((tmp_path / "suggested_plan.json").read_text())
    assert plan and set(plan.values()) == {0.5}
    assert main(["prune", "--model", "cifar_resnet20", "--weights", "none", "--sparsity", str(tmp_path / "suggested_plan.json"),
                 "--dry-run"]) == 0
