import json

import numpy as np
import pytest
import torch
from PIL import Image

from chipprune import ChipPruneError, PlanRequest, get_model_spec, load_model, load_pruned, save_pruned
from chipprune.cli import main
from chipprune.evaluation.metrics import count_macs
from chipprune.planning import make_plan
from chipprune.surgery import prunable_groups
from conftest import prune_with_plan

# Twelve families; 64x64 inputs keep this fast on a CPU. DenseNet (13 s here; concatenations are
# also GoogLeNet's) runs with the slow tests and in bench/torchvision_sweep.py.
FAMILIES = [
    "resnet18",
    "resnext50_32x4d",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "regnet_x_400mf",
    pytest.param("densenet121", marks=pytest.mark.slow),
    "vgg11_bn",
    "convnext_tiny",
    "googlenet",
    "squeezenet1_0",
    "mnasnet0_5",
]


def _random_batches(n=2, batch=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, generator=g), None) for _ in range(n)]


@pytest.mark.parametrize("name", FAMILIES)
def test_torchvision_family_prunes_with_chip_and_reloads(name, tmp_path):
    torch.manual_seed(0)
    model = load_model(name, None)[0].eval()
    spec = get_model_spec(name, image_size=64)
    macs_before = count_macs(model, 64)
    plan, result = prune_with_plan(model, spec, PlanRequest(sparsity="0.3"), _random_batches())
    pruned = result.model
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    macs_after = count_macs(pruned, 64)
    assert macs_after == plan.macs and macs_after < 0.75 * macs_before
    modules = dict(pruned.named_modules())
    for record in result.record["groups"]:
        root = modules[record["group"]]
        width = root.out_features if isinstance(root, torch.nn.Linear) else root.out_channels
        assert width == plan.keep[record["group"]] == record["channels_after"]
    save_pruned(result, tmp_path)
    reloaded = load_pruned(tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(x), out)


def test_channel_shuffle_models_get_a_clear_error():
    model = load_model("shufflenet_v2_x0_5", None)[0].eval()
    with pytest.raises(ChipPruneError, match="channel shuffle"):
        prunable_groups(model, get_model_spec("shufflenet_v2_x0_5", image_size=64))


def _image_folder(root, size=32, per_class=8):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_user_model_with_concat_depthwise_and_residual_from_the_cli(tmp_path, capsys):
    data = _image_folder(tmp_path / "data")
    out = tmp_path / "pruned"
    args = ["prune", "--model", "custom_nets:tiny_net", "--weights", "none", "--image-size", "32", "--data", str(data)]
    args += ["--sparsity", "0.5", "--calib-images", "16", "--batch-size", "8", "--out", str(out), "--quiet", "-v"]
    assert main(args) == 0
    record = json.loads((out / "pruning.json").read_text())
    assert record["model"] == "custom_nets:tiny_net"
    widths = {g["group"]: g["channels_after"] for g in record["groups"]}
    # The residual stream (stem + fuse) carries the depthwise conv with it (its input and output
    # channels are the same channels); the two concatenated branches are pruned on their own.
    assert widths == {"stem.0": 8, "branch_a.0": 6, "branch_b.3": 6}
    stream = next(g for g in record["groups"] if g["group"] == "stem.0")
    assert stream["members"] == ["stem.0", "branch_b.0", "fuse.0"]
    # Loading imports and runs the user's function, so the user has to name it: the folder alone may not.
    with pytest.raises(ChipPruneError, match="confirm with --model custom_nets:tiny_net"):
        load_pruned(out)
    assert main(["export", str(out)]) == 2 and "confirm with --model" in capsys.readouterr().err
    model = load_pruned(out, model="custom_nets:tiny_net")
    assert model.branch_b[0].groups == model.branch_b[0].out_channels == 8
    assert model.fuse[0].in_channels == 12 and model.head[2].in_features == 8
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert main(["export", str(out), "--model", "custom_nets:tiny_net"]) == 0
    assert (out / "model.onnx").is_file() and "ONNX Runtime matches" in capsys.readouterr().out


def _groups(name, size=None):
    model = load_model(name, None)[0].eval()
    spec = get_model_spec(name, size)
    _, groups, _ = prunable_groups(model, spec)
    return model, spec, groups


def test_plan_file_with_glob_patterns(tmp_path):
    model, spec, groups = _groups("cifar_resnet20")
    (tmp_path / "plan.json").write_text(json.dumps({"layer*.conv1": 0.5, "layer1.*.conv1": 0.25, "layer2.0.conv2": 0.5}))
    plan = make_plan(model, spec, groups, PlanRequest(sparsity=str(tmp_path / "plan.json")))
    assert plan.keep["layer1.0.conv1"] == 12 and plan.keep["layer3.2.conv1"] == 32  # later pattern wins
    assert plan.keep["layer2.0.conv2"] == 16 and plan.keep["conv1"] == 16  # unlisted groups stay whole
    (tmp_path / "plan.yaml").write_text("'layer3.*.conv1': 0.75\n")
    assert make_plan(model, spec, groups, PlanRequest(sparsity=str(tmp_path / "plan.yaml"))).keep["layer3.1.conv1"] == 16
    (tmp_path / "bad.json").write_text(json.dumps({"layer9.*": 0.5}))
    with pytest.raises(ChipPruneError, match="matches no prunable layer"):
        make_plan(model, spec, groups, PlanRequest(sparsity=str(tmp_path / "bad.json")))


@pytest.mark.parametrize("target", [0.5, 0.3])
def test_target_macs_lands_within_one_percent(target):
    model, spec, groups = _groups("cifar_resnet56")
    plan = make_plan(model, spec, groups, PlanRequest(target_macs=target))
    assert abs(plan.macs / count_macs(model, 32) - target) <= 0.01 * target


def test_unreachable_target_macs_is_refused():
    model, spec, groups = _groups("cifar_resnet20")
    with pytest.raises(ChipPruneError, match="cannot be reached"):
        make_plan(model, spec, groups, PlanRequest(target_macs=0.001))


def test_round_to_gives_multiples():
    model, spec, groups = _groups("resnet18", 64)
    plan = make_plan(model, spec, groups, PlanRequest(sparsity="0.3", round_to=8))
    assert all(k % 8 == 0 for k in plan.keep.values())


@pytest.mark.parametrize("criterion", ["l1", "random", "hrank"])
def test_other_criteria_run_through_the_same_pipeline(criterion):
    model, spec = load_model("cifar_resnet20", None)
    batches = _random_batches(size=32) if criterion == "hrank" else None
    _, result = prune_with_plan(model, spec, PlanRequest(sparsity="0.25"), batches, criterion)
    assert result.record["criterion"] == criterion
    assert result.model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_hrank_counts_map_ranks():
    from chipprune.scoring.criteria import hrank_per_image

    maps = torch.zeros(1, 3, 4, 4)
    maps[0, 0] = torch.outer(torch.arange(1.0, 5.0), torch.ones(4))  # rank 1
    maps[0, 1] = torch.eye(4)  # rank 4
    ranks, norm = hrank_per_image(maps)
    assert ranks.tolist() == [[1.0, 4.0, 0.0]] and norm.tolist() == [4.0]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["prune", "--dry-run", "--target-macs", "0.5", "--round-to", "4"]) == 0
    out = capsys.readouterr().out
    assert "layer3.8.conv1" in out and "dry run" in out and "MACs" in out
    assert list(tmp_path.iterdir()) == []


def test_eval_with_latency(tmp_path, capsys):
    model, spec = load_model("cifar_resnet20", None)
    save_pruned(prune_with_plan(model, spec, PlanRequest(sparsity="0.5"), criterion="l1")[1], tmp_path)
    assert main(["eval", str(tmp_path), "--no-accuracy", "--latency", "--batch-sizes", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert "speed-up" in out and "MAC reduction" in out


def test_ignored_layers_and_the_classifier_keep_their_outputs():
    model = load_model("cifar_resnet20", None)[0].eval()
    spec = get_model_spec("cifar_resnet20")
    dg, groups, outputs = prunable_groups(model, spec, ignored=["layer2.1.conv1"])
    assert outputs == ["linear"]
    names = {m for g in groups for m in g.members}
    assert "layer2.1.conv1" not in names and "linear" not in names
    with pytest.raises(ChipPruneError, match="names no layer"):
        prunable_groups(model, spec, ignored=["layer9.conv"])
    # A plan made without a layer is pruned without it, also when pruned apart from its planning.
    _, result = prune_with_plan(model, spec, PlanRequest(sparsity="0.5", ignored=("layer2.1.conv1",)), criterion="l1")
    assert model.layer2[1].conv1.out_channels == 32 and model.layer2[0].conv1.out_channels == 16
    assert "layer2.1.conv1" not in {g["group"] for g in result.record["groups"]}


@pytest.mark.parametrize("target", [0.1, 0.15, 0.2, 0.5])
def test_mac_target_plans_prune_widths_that_are_not_powers_of_two(target):
    # Plans from --target-macs give counts such as 5 of 12 channels; the surgery must keep exactly
    # those counts (re-deriving them from a ratio in floating point can land one short).
    model = load_model("custom_nets:tiny_net", None)[0].eval()
    spec = get_model_spec("custom_nets:tiny_net", image_size=32)
    plan, result = prune_with_plan(model, spec, PlanRequest(target_macs=target), criterion="l1")
    groups = prunable_groups(load_model("custom_nets:tiny_net", None)[0], spec)[1]
    assert {r["group"]: r["channels_after"] for r in result.record["groups"]} == {
        g.name: plan.keep[g.name] for g in groups if plan.keep[g.name] < g.channels
    }
    assert result.model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_a_user_model_built_from_chipprunes_own_layers_prunes_and_reloads(tmp_path, capsys, monkeypatch):
    # The option-A shortcut's pruner is every model's default, not only the registry's CIFAR ResNets'.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynets.py").write_text("from chipprune.models import cifar_resnet\n\ndef resnet8():\n    return cifar_resnet(8)\n")
    out = tmp_path / "pruned"
    assert main(["prune", "--model", "mynets:resnet8", "--weights", "none", "--image-size", "32", "--sparsity", "0.5",
                 "--criterion", "l1", "--no-eval", "--no-bn-recalibration", "--out", str(out), "--quiet"]) == 0
    pruned = load_pruned(out, model="mynets:resnet8")
    assert pruned.layer2[0].shortcut.out_channels < 32 and pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
