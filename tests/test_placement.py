"""Where the decompositions of channel independence run: the probe's choice, its cache, the override."""

import contextlib
import json
import warnings

import pytest
import torch

from chipprune import ChipPruneError, decompositions_on
from chipprune.cli import main
from chipprune.scoring import placement
from chipprune.scoring.independence import channel_independence


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty cache directory and no choices made in this process yet."""
    monkeypatch.setenv("CHIPPRUNE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(placement, "_chosen", {})
    return tmp_path


def fake_timer(seconds: dict[str, float], calls: list):
    def timer(operation, where, shape, device):
        calls.append((operation, where, shape))
        return seconds[where]
    return timer


def test_the_probe_picks_the_fastest_placement_and_reports_every_time():
    calls = []
    result = placement.probe("eigh", (64, 64), torch.device("cpu"), fake_timer({"cpu": 3e-3, "cusolver": 1e-3, "magma": 2e-3}, calls))
    assert result["placement"] == "cusolver"
    assert result["seconds"]["cpu"] == 3e-3 and result["seconds"]["cusolver"] == 1e-3
    assert {where for _, where, _ in calls} == {"cpu", "cusolver"} | ({"magma"} if torch.cuda.has_magma else set())


def test_a_choice_is_probed_once_per_size_and_cached_per_machine(fresh, monkeypatch):
    calls = []
    timer = fake_timer({"cpu": 1e-3, "cusolver": 5e-3, "magma": 9e-3}, calls)
    device = torch.device("cpu")
    assert placement._placement("eigh", (256, 256), device, timer) == "cpu"
    assert placement._placement("eigh", (256, 256), device, timer) == "cpu"
    probes = len(calls)
    assert probes == len(placement._candidates())  # one timing per placement, once
    files = list((fresh / "decompositions").glob("*.json"))
    assert len(files) == 1
    cached = json.loads(files[0].read_text())
    assert cached["choices"]["eigh 256x256"]["placement"] == "cpu"
    # A new process (no choices in memory) reads the cache instead of probing again.
    monkeypatch.setattr(placement, "_chosen", {})
    assert placement._placement("eigh", (256, 256), device, timer) == "cpu"
    assert len(calls) == probes
    # Another size is probed on its own.
    placement._placement("svd", (512, 49), device, timer)
    assert len(calls) == 2 * probes


def test_a_damaged_cache_is_probed_again(fresh):
    device = torch.device("cpu")
    path = placement._cache_path(device)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    calls = []
    assert placement._placement("eigh", (64, 64), device, fake_timer({"cpu": 2.0, "cusolver": 1.0, "magma": 3.0}, calls)) == "cusolver"
    assert calls
    assert json.loads(path.read_text())["choices"]["eigh 64x64"]["placement"] == "cusolver"


def test_an_explicit_placement_overrides_the_probe(fresh):
    calls = []
    with decompositions_on("cpu"):
        assert placement._placement("eigh", (64, 64), torch.device("cpu"), fake_timer({}, calls)) == "cpu"
    assert calls == [] and not (fresh / "decompositions").exists()


def test_an_unknown_placement_is_refused():
    with pytest.raises(ChipPruneError, match="choose from auto, cpu, cusolver, magma"):
        with decompositions_on("tpu"):
            pass


def test_decompositions_on_the_cpu_are_torch_linalg_exactly():
    a = torch.randn(5, 12, 40, dtype=torch.float64)
    gram = a @ a.mT
    lam, u = placement.eigh(gram)
    ref_lam, ref_u = torch.linalg.eigh(gram)
    assert torch.equal(lam, ref_lam) and torch.equal(u, ref_u)
    tall = torch.randn(3, 30, 7, dtype=torch.float64)
    u, s = placement.svd(tall)
    ref_u, ref_s, _ = torch.linalg.svd(tall, full_matrices=False)
    assert torch.equal(s, ref_s) and torch.equal(u, ref_u)


def test_the_cpu_thread_placement_gives_the_same_scores(fresh):
    """The path a GPU machine takes for "cpu" (maps moved to host threads and back) is pure
    bookkeeping: run it on CPU tensors by forcing it, and compare with the plain path."""
    maps = torch.randn(6, 8, 5, 5)
    plain = channel_independence(maps)
    host = maps.double().reshape(6, 8, 25)
    parts = placement.map_on_cpu_threads(torch.linalg.eigh, list((host @ host.mT).chunk(3)), 3)
    lam = torch.cat([p[0] for p in parts])
    assert torch.allclose(lam, torch.linalg.eigh(host @ host.mT)[0])
    with decompositions_on("cpu"):
        assert torch.equal(channel_independence(maps), plain)


def test_the_cli_refuses_an_unknown_placement(capsys):
    assert main(["score", "--model", "cifar_resnet56", "--decompose-on", "tpu"]) == 2
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_a_placement_that_fails_in_the_probe_is_never_chosen():
    def timer(operation, where, shape, device):
        if where == "cusolver":
            raise RuntimeError("cusolver error: CUSOLVER_STATUS_INVALID_VALUE, when calling gesvdj")
        return {"cpu": 2e-3, "magma": 9e-3}[where]

    result = placement.probe("svd", (2048, 49), torch.device("cpu"), timer)
    assert result["placement"] == "cpu"
    assert "CUSOLVER_STATUS_INVALID_VALUE" in result["failed"]["cusolver"]


def test_under_torchrun_only_the_machines_first_process_probes(fresh, monkeypatch):
    device = torch.device("cpu")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(placement, "_wait", {"in_vain": False})
    calls, naps = [], []

    def first_process_writes_its_choice(seconds):  # what process 0 does meanwhile
        naps.append(seconds)
        if len(naps) == 3:
            table = placement.placement_table(device)
            table["choices"]["eigh 128x128"] = {"placement": "cusolver", "seconds": {"cpu": 2e-3, "cusolver": 1e-3}}
            placement.write_json(placement._cache_path(device), table)

    monkeypatch.setattr(placement, "_sleep", first_process_writes_its_choice)
    assert placement._placement("eigh", (128, 128), device, fake_timer({"cpu": 1e-3, "cusolver": 5e-3, "magma": 9e-3}, calls)) == "cusolver"
    assert calls == [] and len(naps) == 3  # it waited for the first process's probe instead of probing too


def test_a_process_that_waits_in_vain_probes_for_itself_and_waits_no_more(fresh, monkeypatch):
    device = torch.device("cpu")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(placement, "_wait", {"in_vain": False})
    now = [0.0]
    monkeypatch.setattr(placement, "_clock", lambda: now[0])
    monkeypatch.setattr(placement, "_sleep", lambda s: now.__setitem__(0, now[0] + s))
    calls = []
    timer = fake_timer({"cpu": 1e-3, "cusolver": 5e-3, "magma": 9e-3}, calls)
    assert placement._placement("eigh", (64, 64), device, timer) == "cpu"
    assert now[0] >= placement.PROBE_WAIT_S and calls  # waited the whole time, then probed
    waited = now[0]
    placement._placement("eigh", (96, 96), device, timer)
    assert now[0] == waited  # the next size is probed at once


def test_a_forced_gpu_placement_that_refuses_matrices_says_so_once(monkeypatch):
    def refuses(x):
        raise RuntimeError("cusolver error: CUSOLVER_STATUS_INVALID_VALUE")

    monkeypatch.setattr(placement, "_refusals", set())
    monkeypatch.setattr(placement, "_linalg_library", lambda name: contextlib.nullcontext())
    x = torch.eye(4, dtype=torch.float64).expand(2, 4, 4)
    with decompositions_on("cusolver"), pytest.warns(UserWarning, match="cusolver refused svd 4x4"):
        assert placement._on_gpu("cusolver", "svd", refuses, x) is None
    with decompositions_on("cusolver"), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert placement._on_gpu("cusolver", "svd", refuses, x) is None  # said once
    with decompositions_on("auto"), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert placement._on_gpu("cusolver", "eigh", refuses, x) is None  # the probe's own choice: no warning
