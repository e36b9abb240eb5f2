import json

import pytest
import torch

import chipprune
from chipprune import Calibration, get_model_spec, load_model, load_pruned, prune, save_pruned
from chipprune.surgery import prune_group
from chipprune.evaluation.metrics import count_macs, count_params
from chipprune.surgery import prunable_groups

QUICK = Calibration(images=64, batch_size=32)


def _randomise_batchnorm(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=g) + 0.5
            m.bias.data = torch.randn(c, generator=g) * 0.2
            m.running_mean = torch.randn(c, generator=g) * 0.1
            m.running_var = torch.rand(c, generator=g) + 0.5


def _silence(model, conv_name, channels):
    """Make output channels of ``conv_name`` exactly zero after its BatchNorm (gamma = beta = 0)."""
    bn = dict(model.named_modules())[conv_name.replace("conv", "bn")]
    bn.weight.data[channels] = 0
    bn.bias.data[channels] = 0


def test_removing_dead_channels_keeps_outputs_exactly():
    """Residual streams, option-A shortcuts and inner convs: removing channels that carry zeros must not
    change the output. A misaligned shortcut (the official code's bug) would."""
    torch.manual_seed(0)
    model = load_model("cifar_resnet20", None)[0].eval()
    _randomise_batchnorm(model)
    spec = get_model_spec("cifar_resnet20")
    dg, groups, _ = prunable_groups(model, spec)
    by_name = {g.name: g for g in groups}
    # Stage-2 slot 9 carries stage-1 channel 1 and slot 13 channel 5 (both dead); 0, 3, 30 are padding.
    # Stage-3 slot 16 carries stage-2 channel 0 (dead); 5 and 63 are padding.
    remove = {
        "conv1": [1, 5, 10],
        "layer2.0.conv2": [0, 3, 9, 13, 30],
        "layer3.0.conv2": [5, 16, 63],
        "layer1.1.conv1": [0, 2, 4, 6],
        "layer2.2.conv1": [31],
        "layer3.0.conv1": list(range(0, 64, 3)),
    }
    for group, chans in remove.items():
        for member in by_name[group].members:
            if "conv" in member:
                _silence(model, member, chans)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    for group, chans in remove.items():
        prune_group(dg, model, group, chans)
    with torch.no_grad():
        got = model(x)
    assert model.conv1.out_channels == 13
    assert model.layer2[0].shortcut.in_channels == 13 and model.layer2[0].shortcut.out_channels == 27
    assert model.layer3[0].conv1.out_channels == 64 - 22
    assert model.linear.in_features == 61
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def paper_setting_result():
    """The bundled ResNet-56 pruned to the paper's setting, made once for the tests that only read it."""
    model, spec = load_model("cifar_resnet56", "bundled")
    return prune(model, spec, calibration=QUICK, evaluate_on=False, progress=False)


def test_paper_setting_gives_the_planned_widths_and_sizes(paper_setting_result):
    result = paper_setting_result
    m = result.model
    assert m.conv1.out_channels == 13  # 16 * (1 - 0.15) -> 13
    assert all(b.conv1.out_channels == 9 for b in m.layer1)  # int(16 * 0.6)
    assert all(b.conv1.out_channels == 19 for b in m.layer2)
    assert all(b.conv1.out_channels == 38 for b in m.layer3)
    assert all(b.conv2.out_channels == 27 for b in m.layer2)
    assert all(b.conv2.out_channels == 64 for b in m.layer3)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    r = result.report
    assert all(isinstance(n, int) for n in (r.params_before, r.params_after, r.macs_before, r.macs_after))
    assert r.params_after == count_params(m) and r.macs_after == count_macs(m, 32)
    # Paper: 0.48M params, 65.94M MACs (65.17M conv + linear; we prune the stem with stage 1: 64.84M).
    assert round(r.params_after / 1e6, 2) == 0.49 and 64.0e6 < r.macs_after < 65.2e6


def test_save_and_reload_give_identical_outputs(tmp_path, paper_setting_result):
    result = paper_setting_result
    save_pruned(result, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"model.safetensors", "pruning.json", "report.json", "report.md", "channels.png"}
    record = json.loads((tmp_path / "pruning.json").read_text())
    assert record["model"] == "cifar_resnet56" and len(record["groups"]) == 29
    reloaded = load_pruned(tmp_path)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded(x), result.model(x))


def test_vgg_paper_setting_prunes_and_runs():
    model = load_model("cifar_vgg16_bn", None)[0].eval()
    spec = get_model_spec("cifar_vgg16_bn")
    result = prune(model, spec, calibration=QUICK, evaluate_on=False, recalibrate_bn=False, progress=False)
    widths = [m.out_channels for n, m in result.model.features.named_children() if n.startswith("conv")]
    assert widths == [50, 50, 101, 101, 202, 202, 202, 128, 128, 128, 128, 128, 512]
    assert result.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # VGG feature maps are scored at the ReLU output (before pooling), as in the official code.
    assert result.record["groups"][1]["scored_maps"] == ["features.relu1:output"]


def test_scoring_a_dead_channel_removes_it_first():
    model, spec = load_model("cifar_resnet56", "bundled")
    _silence(model, "layer3.4.conv1", [7])
    scores = chipprune.score(model, spec, QUICK, progress=False)
    s = scores["layer3.4.conv1"].scores
    # (the trained model has a few dead ReLU channels of its own, which also score 0)
    assert s[7] == 0 and (s > 0).sum() >= 56
    assert 7 in torch.argsort(s)[: int((s == 0).sum())].tolist()
