"""Latency table (cache, shapes after pruning) and the latency-driven plan search on constructed costs."""

from __future__ import annotations

import json
import math

import pytest
import torch

import chipprune
from chipprune.cli import main
from chipprune.errors import ChipPruneError
from chipprune.surgery import ChannelGroup
from chipprune.planning.latency_search import BlendedLatency, candidate_widths, parse_latency_target, plan_for_latency, removal_mass
from chipprune.planning.latency_table import _REFERENCE, LatencyModel, LatencyTable, LayerShape, _layer_shapes, default_table_path
from chipprune.surgery import prunable_groups, remove_channels
from chipprune.scoring import GroupScores

CONV = LayerShape("conv2d", 16, 32, (8, 8), (3, 3, 1, 1, 1, 1, 1, 1, 1, 0))


class CountingTimer:
    """A stand-in for the stopwatch: a layer 'takes' its MACs in nanoseconds, times ``speed`` (how
    slow the machine is at the moment); timings of layers other than the reference are counted."""

    def __init__(self) -> None:
        self.calls = 0
        self.speed = 1.0

    def __call__(self, shape: LayerShape, batch: int) -> float:
        if shape != _REFERENCE:
            self.calls += 1
        return self.speed * 1e-6 * batch * shape.in_channels * shape.out_channels * math.prod(shape.spatial)


# --- the table and its cache ------------------------------------------------------------------------


def test_table_is_cached_per_machine_and_reused(tmp_path):
    path = tmp_path / "t.json"
    timer = CountingTimer()
    table = LatencyTable(path, timer=timer)
    first = table.get(CONV, 4)
    assert table.get(CONV, 4) == first and timer.calls == 1  # measured once
    table.get(CONV, 8)
    table.save()
    data = json.loads(path.read_text())
    assert data["machine"] == table.machine and len([k for k in data["entries"] if "reference" not in k]) == 2

    again = LatencyTable(path, timer=CountingTimer())
    assert again.get(CONV, 4) == first and again._timer.calls == 0 and again.measured == 0


def test_table_saves_as_it_grows(tmp_path):
    path = tmp_path / "t.json"
    table = LatencyTable(path, timer=CountingTimer())
    for c in range(1, 52):
        table.get(LayerShape("conv2d", c, 8, (4, 4), (1, 1, 1, 1, 0, 0, 1, 1, 1, 0)), 1)
    # Not saved explicitly: an interrupted run still keeps the first 50 timings.
    assert len([k for k in json.loads(path.read_text())["entries"] if "reference" not in k]) == 50


def test_timings_are_expressed_at_the_tables_reference_speed(tmp_path):
    timer = CountingTimer()
    table = LatencyTable(tmp_path / "t.json", timer=timer)
    calm = table.get(CONV, 1)
    timer.speed = 3.0  # a neighbour slows the whole machine down: everything takes 3x as long
    other = LayerShape("conv2d", 32, 32, (8, 8), (3, 3, 1, 1, 1, 1, 1, 1, 1, 0))
    assert table.get(other, 1) == pytest.approx(2 * calm)  # its true ratio to CONV, not 6x
    assert table.slowdown(1) == pytest.approx(3.0)


def test_remeasure_keeps_the_fastest(tmp_path):
    values = iter([5.0, 3.0, 4.0])
    table = LatencyTable(tmp_path / "t.json", timer=lambda shape, batch: 1.0 if shape == _REFERENCE else next(values))
    assert table.get(CONV, 1) == 5.0
    assert table.get(CONV, 1, remeasure=True) == 3.0
    assert table.get(CONV, 1, remeasure=True) == 3.0


def test_a_table_timed_at_another_speed_is_timed_again_before_use(tmp_path):
    path, timer = tmp_path / "t.json", CountingTimer()
    table = LatencyTable(path, timer=timer)
    table.check_conditions(1)
    first = table.get(CONV, 1)
    table.save()
    # Same speed: the cached entry serves, nothing is timed.
    again = LatencyTable(path, timer=timer)
    again.check_conditions(1)
    calls = timer.calls
    assert again.get(CONV, 1) == first and timer.calls == calls and not again.notes
    # The machine runs 2x slower now (another load or power state): entries are timed again, once.
    timer.speed = 2.0
    slower = LatencyTable(path, timer=timer)
    slower.check_conditions(1)
    slower.get(CONV, 1)
    slower.get(CONV, 1)
    assert timer.calls == calls + 1 and "another speed of this machine" in slower.notes[0]
    # --retime does the same whatever the speed.
    timer.speed = 1.0
    forced = LatencyTable(path, timer=timer, retime=True)
    forced.get(CONV, 1)
    assert timer.calls == calls + 2


def test_layers_slower_than_their_model_are_timed_again_then_scaled_to_agree(tmp_path):
    model, spec = chipprune.load_model("cifar_resnet20", None)
    _, groups, _ = prunable_groups(model, spec)

    class Disturbed(CountingTimer):  # every layer alone 'takes' 100x what the counting timer says
        def __call__(self, shape, batch):
            return super().__call__(shape, batch) * (1.0 if shape == _REFERENCE else 100.0)

    table = LatencyTable(tmp_path / "t.json", timer=Disturbed())
    lm = LatencyModel(model, spec, groups, table, progress=False)
    full = {g.name: g.channels for g in groups}
    assert lm.scale < 0.1 and lm.predict(full) == pytest.approx(lm.original)  # the prediction at full width is the measured model
    assert "scaled to agree" in table.notes[0]


def test_the_untimed_rest_is_fitted_through_the_model_and_a_half_width_copy(tmp_path, monkeypatch):
    model, spec = chipprune.load_model("cifar_resnet20", None)
    _, groups, _ = prunable_groups(model, spec)
    # The whole model takes 10 ms, the half-width copy 7 ms; each layer alone 0.01 ms.
    monkeypatch.setattr(LatencyModel, "_measure_original", lambda self, m, what="the model": 10.0 if what == "the model" else 7.0)
    lm = LatencyModel(model, spec, groups, LatencyTable(tmp_path / "t.json", timer=lambda shape, batch: 0.01), progress=False)
    full = {g.name: g.channels for g in groups}
    half = {g.name: g.channels // 2 for g in groups}
    assert lm.predict(full) == pytest.approx(10.0) and lm.predict(half) == pytest.approx(7.0)  # through both measured points
    assert lm._rest_fixed > 0 and lm._rest_per_output > 0  # part of the rest shrinks with the outputs, part does not


def test_a_half_width_copy_that_runs_no_faster_stops_the_search_naming_the_timing(tmp_path, monkeypatch):
    # On a swamped machine every call takes a scheduler's slice, whatever its size.
    model, spec = chipprune.load_model("cifar_resnet20", None)
    _, groups, _ = prunable_groups(model, spec)
    monkeypatch.setattr(LatencyModel, "_measure_original", lambda self, m, what="the model": 10.0)
    with pytest.raises(ChipPruneError, match="latency timings: a copy of the model with every group at half width ran no faster"):
        LatencyModel(model, spec, groups, LatencyTable(tmp_path / "t.json", timer=CountingTimer()), progress=False)


def test_the_search_goes_on_when_the_re_timed_plan_misses_the_budget(tmp_path, monkeypatch):
    from chipprune.planning.latency_search import plan_for_latency_budget

    model, spec = chipprune.load_model("cifar_resnet20", None)
    _, groups, _ = prunable_groups(model, spec)
    scores = {g.name: GroupScores(g.name, torch.rand(g.channels, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
                                  ["m"], 8, 1.0) for g in groups}
    original = {"ms": None}

    def measured(self, m, what="the model"):  # the layers' sum plus 40% fixed costs; the half-width copy a bit faster
        layers = sum(self.table.get(s, 1) for s in _layer_shapes(m, spec).values())
        original["ms"] = original["ms"] or layers * 1.4
        return original["ms"] if what == "the model" else 0.5 * original["ms"]

    class Settling(CountingTimer):  # timed again, every layer runs 20% faster (the machine settled)
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __call__(self, shape, batch):
            again = shape in self.seen
            self.seen.add(shape)
            return super().__call__(shape, batch) * (0.8 if again else 1.0)

    monkeypatch.setattr(LatencyModel, "_measure_original", measured)
    real_init, settling = LatencyTable.__init__, Settling()
    monkeypatch.setattr(LatencyTable, "__init__", lambda self, *a, **k: real_init(self, *a, **{**k, "timer": settling}))
    searches = []
    real = chipprune.planning.latency_search.plan_for_latency
    monkeypatch.setattr(chipprune.planning.latency_search, "plan_for_latency", lambda *a, **k: searches.append(k) or real(*a, **k))
    plan = plan_for_latency_budget(model, spec, groups, scores, "0.7", table=tmp_path / "t.json", progress=False)
    assert len(searches) >= 2 and searches[1]["start_keep"] is not None  # the first plan missed the budget once re-timed
    timed = plan.latency["1"]
    assert timed["predicted_ms"] <= 0.7 * timed["original_ms"] * 1.0001


def test_a_search_stuck_near_the_original_names_the_timings():
    groups = [_group("g", 10)]
    scores = {"g": _scores("g", list(range(10)))}
    flat = {w: 10.0 - 0.01 * (10 - w) for w in range(1, 11)}  # every width 'takes' about the same time
    with pytest.raises(ChipPruneError, match="The layer timings barely change with width"):
        plan_for_latency(groups, scores, TablePredictor({"g": flat}), 5.0)


def test_a_plan_predicted_no_faster_after_re_timing_is_called_unreliable_timing(tmp_path):
    from chipprune.planning.latency_search import _confirm_predictions
    from chipprune.planning.plan import Plan

    full, keep = {"g": 16}, {"g": 8}

    class Drifting:  # re-timed, the unpruned model came out faster than the plan
        batch_size, original = 1, 10.0

        def refresh(self, _):
            pass

        def predict(self, k):
            return 9.0 if k == full else 9.5

    with pytest.raises(ChipPruneError, match="latency timings on this machine are unreliable"):
        _confirm_predictions(Plan({"g": 0.5}, keep, "test"), [Drifting()], full, LatencyTable(tmp_path / "t.json", timer=CountingTimer()))


def test_another_machines_table_is_refused(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"format": "chipprune-latency-table/1", "machine": "cuda Imaginary GPU", "entries": {}}))
    with pytest.raises(ChipPruneError, match="measured on 'cuda Imaginary GPU'"):
        LatencyTable(path)


@pytest.mark.parametrize("text", ["{not json", json.dumps({"format": "something else"}), json.dumps([1, 2])])
def test_corrupt_table_gives_a_clear_error(tmp_path, text):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(ChipPruneError, match="t.json"):
        LatencyTable(path)


def test_default_path_is_per_machine_under_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CHIPPRUNE_CACHE_DIR", str(tmp_path))
    path = default_table_path("cpu")
    assert path.parent == tmp_path / "latency" and path.suffix == ".json"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 97)  # another configuration, another table
    assert default_table_path("cpu") != path


def test_layer_shape_builds_what_it_describes():
    layer, x = CONV.build(2, "cpu")
    assert isinstance(layer, torch.nn.Conv2d) and layer.in_channels == 16 and layer.out_channels == 32
    assert layer(x).shape == (2, 32, 8, 8) and CONV.output_elements() == 32 * 8 * 8


# --- shapes of a plan, without pruning ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar_resnet20", "tests.custom_nets:tiny_net", "mobilenet_v2", "resnext50_32x4d"])
def test_predicted_layer_shapes_match_the_pruned_model(name, tmp_path):
    torch.manual_seed(0)
    model, spec = chipprune.load_model(name, None, image_size=64 if "custom" not in name and "cifar" not in name else None)
    dg, groups, classifier = prunable_groups(model, spec)
    lm = LatencyModel(model, spec, groups, LatencyTable(tmp_path / "t.json", timer=CountingTimer()), progress=False,
                      original_ms=1.0)
    keep = {}
    for i, g in enumerate(groups):
        widths = candidate_widths(g, 0.7)
        keep[g.name] = widths[i % len(widths)]
    scores = {g.name: GroupScores(g.name, torch.rand(g.channels, dtype=torch.float64), ["m"], 1, 1.0) for g in groups}
    remove_channels(model, dg, groups, keep, scores)
    actual = _layer_shapes(model, spec)
    assert actual.keys() == lm._base.keys()
    for layer, shape in actual.items():
        assert lm.shape(layer, keep) == shape, layer


# --- the plan search on a constructed cost table ------------------------------------------------------


class TablePredictor:
    """Each group is one layer whose cost is given per width; the model costs their sum."""

    def __init__(self, costs: dict[str, dict[int, float]]) -> None:
        self.costs = costs

    @property
    def original(self) -> float:
        return sum(c[max(c)] for c in self.costs.values())

    def layers_of(self, group: str) -> list[str]:
        return [group]

    def layer_cost(self, layer: str, keep) -> float:
        return self.costs[layer][keep[layer]]

    def predict(self, keep) -> float:
        return sum(self.layer_cost(g, keep) for g in self.costs)


def _group(name: str, channels: int) -> ChannelGroup:
    return ChannelGroup(name, channels, [name])


def _scores(name: str, values) -> GroupScores:
    return GroupScores(name, torch.tensor(values, dtype=torch.float64), [name], 64, 1.0)


def test_search_meets_the_target_and_skips_widths_that_are_no_faster():
    # Group "a" runs in blocks of 4 channels: widths 5-8 cost what 8 does, 1-4 what 4 does.
    a = {w: 10.0 if w > 4 else 4.0 for w in range(1, 9)}
    b = {w: float(w) for w in range(1, 9)}  # proportional
    groups = [_group("a", 8), _group("b", 8)]
    scores = {"a": _scores("a", [1.0] * 8), "b": _scores("b", [1.0] * 8)}
    predictor = TablePredictor({"a": a, "b": b})
    plan = plan_for_latency(groups, scores, predictor, 12.0, max_ratio=0.5, window=8)
    assert plan.predicted <= 12.0 and predictor.predict(plan.keep) == plan.predicted
    # "a" is cut straight to 4 (widths 5-7 would remove channels for nothing); "b" loses what is left to lose.
    assert plan.keep["a"] == 4
    assert plan.keep["b"] == 8 - math.ceil(8 - (12.0 - 4.0))


def test_search_takes_the_cheapest_channels_first():
    # Both groups save the same time per channel; "dead" has channels that carry no independence.
    cost = {w: float(w) for w in range(1, 9)}
    groups = [_group("live", 8), _group("dead", 8)]
    scores = {"live": _scores("live", [1.0] * 8), "dead": _scores("dead", [0, 0, 0, 0, 1, 1, 1, 1])}
    plan = plan_for_latency(groups, scores, TablePredictor({"live": cost, "dead": dict(cost)}), 12.0)
    assert plan.keep == {"live": 8, "dead": 4}


def test_search_respects_max_ratio_and_refuses_unreachable_targets():
    cost = {w: float(w) for w in range(1, 11)}
    groups = [_group("g", 10)]
    scores = {"g": _scores("g", list(range(10)))}
    plan = plan_for_latency(groups, scores, TablePredictor({"g": cost}), 1.0 + 1e-9, max_ratio=0.99)
    assert plan.keep["g"] == 1
    plan = plan_for_latency(groups, scores, TablePredictor({"g": cost}), 7.0, max_ratio=0.7)
    assert plan.keep["g"] == 7
    with pytest.raises(ChipPruneError, match="cannot be reached"):
        plan_for_latency(groups, scores, TablePredictor({"g": cost}), 2.0, max_ratio=0.7)
    # A residual stream (channels read in several maps) keeps more: at most 30% goes by default.
    shared = {"g": GroupScores("g", torch.arange(10, dtype=torch.float64), ["block1", "block2"], 64, 1.0)}
    with pytest.raises(ChipPruneError, match="residual streams 30%"):
        plan_for_latency(groups, shared, TablePredictor({"g": cost}), 6.5)
    assert plan_for_latency(groups, shared, TablePredictor({"g": cost}), 7.0).keep["g"] == 7


def test_blended_latency_is_the_mean_fraction():
    one = TablePredictor({"g": {w: float(w) for w in range(1, 5)}})
    two = TablePredictor({"g": {1: 1.0, 2: 1.0, 3: 4.0, 4: 4.0}})
    blend = BlendedLatency([one, two])
    assert blend.original == 1.0
    assert blend.predict({"g": 2}) == pytest.approx((2 / 4 + 1 / 4) / 2)


def test_removal_mass_is_convex_and_counts_every_map():
    g = _group("g", 4)
    s = GroupScores("g", torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64), ["m1", "m2"], 8, 1.0)
    mass = removal_mass(g, s)
    assert mass[4] == 0.0 and mass[2] == pytest.approx(-2 * math.log(0.5))
    assert mass[1] - mass[2] > mass[2] - mass[3] > mass[3] - mass[4] > 0


def test_candidate_widths_follow_blocks_and_grain():
    assert candidate_widths(_group("g", 16), 0.5) == list(range(8, 17))
    assert candidate_widths(_group("g", 64), 0.7) == list(range(20, 65, 4))
    grouped = ChannelGroup("g", 64, ["g"], channel_groups=32)
    assert candidate_widths(grouped, 0.5) == [32, 64]


@pytest.mark.parametrize(
    "value, expected",
    [(0.5, ("fraction", 0.5)), ("0.25", ("fraction", 0.25)), ("12ms", ("ms", 12.0)), ("3.5 ms", ("ms", 3.5))],
)
def test_parse_latency_target(value, expected):
    assert parse_latency_target(value) == expected


@pytest.mark.parametrize("value", ["1.5", "0", "-2ms", "fast", "nan"])
def test_parse_latency_target_rejects(value):
    with pytest.raises(ChipPruneError, match="target-latency"):
        parse_latency_target(value)


# --- end to end from the CLI ---------------------------------------------------------------------------


@pytest.mark.slow
def test_prune_to_a_latency_budget_from_the_cli(tmp_path, capsys):
    """cifar_resnet20 (random weights) to 80% of its batch-1 latency: predicted and measured are reported."""
    _latency_budget_from_the_cli(tmp_path, capsys, ["--model", "cifar_resnet20"], "0.8", "cifar_resnet20")


def test_prune_a_small_network_to_a_latency_budget_from_the_cli(tmp_path, capsys):
    _latency_budget_from_the_cli(tmp_path, capsys, ["--model", "tests.custom_nets:tiny_net", "--image-size", "32"], "0.9",
                                 "tests.custom_nets:tiny_net")


def _latency_budget_from_the_cli(tmp_path, capsys, model_args, budget, name):
    table, out = tmp_path / "table.json", tmp_path / "pruned"
    args = ["prune", *model_args, "--weights", "none", "--calib-images", "32", "--batch-size", "16",
            "--target-latency", budget, "--latency-table", str(table), "--no-eval", "--out", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    lat = report["latency_ms"]["1"]
    assert report["predicted_speedup"]["1"] >= 1 / float(budget)  # the plan meets the budget on the table's own terms
    # Measured against the original in alternating rounds (on the tests' steady clock: fewer MACs, faster).
    assert lat["before_ms"] > lat["after_ms"] > 0 and lat["speedup"] > 1 and lat["rounds"] >= 6 and lat["precise"]
    assert "predicted" in printed and "rounds" in printed and f"target latency {float(budget):.0%}" in printed
    assert report["macs_after"] < report["macs_before"]
    assert chipprune.load_pruned(out, model=name)(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    # The dry run prints the plan with its predicted latency, and writes no model.
    assert main(args[:-3] + ["--out", str(tmp_path / "dry"), "--dry-run", "--quiet"]) == 0
    assert "predicted from the latency table" in capsys.readouterr().out and not (tmp_path / "dry").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target-latency", "1.5"], "fraction in (0, 1)"),
        (["--target-latency", "soon"], "fraction like 0.5 or milliseconds"),
        (["--target-latency", "5ms", "--latency-batch", "1", "64"], "exactly one --latency-batch"),
        (["--target-latency", "0.5", "--sparsity", "0.3"], "without --sparsity"),
        (["--target-latency", "0.5", "--latency-batch", "0"], "argument --latency-batch: must be at least 1, got 0"),
    ],
)
def test_latency_budget_bad_input(extra, message, tmp_path, capsys):
    args = ["prune", "--model", "cifar_resnet20", "--weights", "none", "--calib-images", "16", "--no-eval",
            "--latency-table", str(tmp_path / "t.json"), "--out", str(tmp_path / "o"), "--quiet"]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err


def test_eval_times_onnx_runtime_when_the_export_exists(tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["prune", "--model", "cifar_resnet20", "--weights", "none", "--sparsity", "0.5", "--calib-images", "16",
                 "--no-eval", "--out", str(out), "--quiet"]) == 0
    assert main(["eval", str(out), "--no-accuracy", "--latency", "--batch-sizes", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "pytorch eager" in printed and "onnxruntime" not in printed.split("(median")[0]
    assert main(["export", str(out)]) == 0
    assert main(["eval", str(out), "--no-accuracy", "--latency", "--batch-sizes", "1", "--quiet"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("pytorch eager", "onnxruntime"))]
    assert [r.split()[0] for r in rows] == ["pytorch", "onnxruntime"]


def _scripted_clock(monkeypatch, ms_of, record=None):
    """time_call answers from a script: ms_of(runner name, round) milliseconds (round 0: warm-up)."""
    from chipprune.evaluation import latency

    rounds = {}

    def fake(run, batch, device, *, min_run_time, warmup=3):
        name = run.__name__
        rounds[name] = rounds.get(name, -1) + 1
        if record is not None and rounds[name] > 0:
            record.append(name)
        ms = ms_of(name, rounds[name])
        return latency.Latency(batch, ms, 0.0, 1, device, ms)

    monkeypatch.setattr(latency, "time_call", fake)


def original():
    pass


def pruned():
    pass


def test_compare_latency_alternates_rounds_until_the_interval_is_tight(monkeypatch):
    from chipprune.evaluation.latency import compare_latency

    calls = []
    # The machine is three times slower during round 2, for both models: the round's ratio is unchanged.
    _scripted_clock(monkeypatch, lambda name, r: (10.0 if name == "original" else 5.0) * (3.0 if r == 2 else 1.0), calls)
    c = compare_latency(original, pruned, 1)
    assert calls[:6] == ["original", "pruned", "pruned", "original", "original", "pruned"]  # each round flips the order
    assert (c.speedup, c.speedup_low, c.speedup_high, c.rounds) == (2.0, 2.0, 2.0, 6) and c.precise and c.faster
    # Only the original slowed down in round 2: that round's ratio is an outlier. Six rounds give the
    # whole range as the interval (too wide), so rounds go on until the interval is within 5%.
    _scripted_clock(monkeypatch, lambda name, r: (10.0 if name == "original" else 5.0) * (2.0 if (name, r) == ("original", 2) else 1.0))
    c = compare_latency(original, pruned, 1)
    assert c.speedup == 2.0 and c.rounds == 9 and (c.speedup_low, c.speedup_high) == (2.0, 2.0) and c.precise


def test_a_comparison_says_in_words_what_its_interval_allows(monkeypatch):
    from chipprune.evaluation.latency import compare_latency
    from chipprune.reporting.console import speedup_text

    # Rounds that never agree: the time cap stops them, and the text says so.
    _scripted_clock(monkeypatch, lambda name, r: 10.0 if name == "original" else (4.0 if r % 2 else 8.0))
    c = compare_latency(original, pruned, 1, max_seconds=0.0)
    assert c.rounds == 6 and not c.precise and c.faster
    assert "faster" in speedup_text(c) and "rerun on an idle machine" in speedup_text(c)
    # An interval that contains 1.0 is no measurable difference, whatever the median says.
    _scripted_clock(monkeypatch, lambda name, r: 10.0 if name == "original" else (9.0 if r % 2 else 10.5))
    c = compare_latency(original, pruned, 1, max_seconds=0.0)
    assert not c.faster and not c.slower and "no measurable difference" in speedup_text(c)
    _scripted_clock(monkeypatch, lambda name, r: 10.0 if name == "original" else 12.5)
    assert "slower" in speedup_text(compare_latency(original, pruned, 1))


def test_the_median_interval_uses_order_statistics():
    from chipprune.evaluation.latency import median_interval

    values = list(range(1, 21))
    assert median_interval(values) == (6, 15)  # the textbook 95% interval for n = 20
    assert median_interval(values[:6]) == (1, 6) and median_interval(values[:10]) == (2, 9)


@pytest.mark.real_clock
def test_the_real_stopwatch_times_models_and_layers():
    from chipprune.evaluation.latency import measure_latency
    from chipprune.planning.latency_table import time_layer

    lat = measure_latency(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), 8, 2, min_run_time=0.01)
    assert lat.median_ms > 0 and lat.runs >= 1 and math.isfinite(lat.min_ms)  # times, never compared with a bound
    assert time_layer(CONV, 1, "cpu", 0.01) > 0


class NoisyTablePredictor(TablePredictor):
    """A TablePredictor whose layer timings are uncertain by ``noise`` (relative)."""

    def __init__(self, costs, noise: float) -> None:
        super().__init__(costs)
        self.noise = noise

    def timing_noise(self) -> float:
        return self.noise


def test_a_near_miss_within_the_timing_noise_names_the_noise_not_the_target(monkeypatch):
    import chipprune.planning.latency_search as search

    monkeypatch.setattr(search, "_other_load", lambda: 1.0)  # other work on every core
    # Widths under 5 are no faster than 5 (the timings say so), so the search stops at 5 of 10
    # channels, predicted at 15 of 20 (75%), short of its cap (70% removed); the target is 73%.
    groups = [_group("g", 10)]
    scores = {"g": _scores("g", list(range(10)))}
    costs = {"g": {w: max(w, 5) + 10.0 for w in range(1, 11)}}
    with pytest.raises(ChipPruneError, match=r"missed by less than the timing noise: the best plan found is predicted at 75\.0%.*"
                                             r"uncertain by \+-5\.0%.*load average .* cores.*--target-latency 0\.79"):
        plan_for_latency(groups, scores, NoisyTablePredictor(costs, 0.05), 14.6, max_ratio=0.7)
    # Timings known to +-1%: a miss of 2 points is the target's fault, and the message says so.
    with pytest.raises(ChipPruneError, match=r"cannot be reached: .* the best predicted is 75\.0%"):
        plan_for_latency(groups, scores, NoisyTablePredictor(costs, 0.01), 14.6, max_ratio=0.7)
    # On a quiet machine the same near miss is the target's: wide intervals alone do not blame the noise.
    monkeypatch.setattr(search, "_other_load", lambda: 0.1)
    with pytest.raises(ChipPruneError, match=r"cannot be reached: .* the best predicted is 75\.0%"):
        plan_for_latency(groups, scores, NoisyTablePredictor(costs, 0.05), 14.6, max_ratio=0.7)
    monkeypatch.setattr(search, "_other_load", lambda: 1.0)
    # Every group at its cap: the cap is what stops the search, whatever the noise.
    linear = {"g": {w: w + 10.0 for w in range(1, 11)}}
    with pytest.raises(ChipPruneError, match=r"cannot be reached: .* the best predicted is 70\.0%"):
        plan_for_latency(groups, scores, NoisyTablePredictor(linear, 0.05), 13.6, max_ratio=0.7)
