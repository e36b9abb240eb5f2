import pytest

from conftest import EvilPickle
import torch
import torch.nn.functional as F

from chipprune import ChipPruneError, get_model_spec, list_models, load_model
from chipprune.evaluation.metrics import count_macs, count_params
from chipprune.models import PadShortcut
from chipprune.io.weights import load_weights, read_state_dict


@pytest.mark.parametrize(
    "name, params, macs",
    [
        # Paper: ResNet-56 0.85M params, 125.49M MACs (conv + linear, exactly 125,485,696).
        ("cifar_resnet56", 853_018, 125_485_696),
        # Reference checkpoints' README: ResNet-20 has 269,722 parameters.
        ("cifar_resnet20", 269_722, None),
        ("cifar_resnet110", 1_727_962, 252_887_680),  # paper: 1.72M, 252.89M
    ],
)
def test_cifar_resnet_sizes_match_the_paper(name, params, macs):
    model = load_model(name, None)[0]
    assert count_params(model) == params
    if macs is not None:
        assert count_macs(model, 32) == macs


def test_cifar_vgg16_bn_sizes_match_the_paper():
    model = load_model("cifar_vgg16_bn", None)[0]
    # Paper (thop): 14.98M params, 313.73M MACs. thop leaves BatchNorm parameters out of the count
    # (14,991,946 - 9,472 BN = 14,982,474) and adds ~1 op per BatchNorm output (+0.28M).
    n_bn = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert count_params(model) == 14_991_946
    assert round((count_params(model) - n_bn) / 1e6, 2) == 14.98
    assert count_macs(model, 32) == 313_463_808


def test_torchvision_resnet50_sizes():
    model = load_model("resnet50", None)[0]
    assert count_params(model) == 25_557_032  # paper 25.55M
    # Conv + linear MACs; the paper's 4.11G (thop) also counts BatchNorm, ReLU and pooling.
    assert count_macs(model, 224) == 4_089_184_256


def test_registry_lists_cifar_and_torchvision_models():
    names = list_models()
    assert {"cifar_resnet20", "cifar_resnet56", "cifar_resnet110", "cifar_vgg16_bn", "resnet50", "mobilenet_v2"} <= set(names)
    assert get_model_spec("resnet50").image_size == 224


def test_unknown_model_suggests_close_names():
    with pytest.raises(ChipPruneError, match="cifar_resnet56"):
        get_model_spec("cifar_resnet65")


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56", "cifar_vgg16_bn"])
def test_cifar_models_forward(name):
    model = load_model(name, None)[0].eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_pad_shortcut_is_option_a_and_differentiable():
    m = PadShortcut(16, 32)
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.equal(m(x), F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8)))
    assert torch.autograd.gradcheck(m, (x,))


def test_bundled_resnet56_weights_load():
    model, spec = load_model("cifar_resnet56", "bundled")
    assert spec.bundled_weights_path().is_file()
    assert abs(model.bn1.running_var.sum().item()) > 0


def test_no_bundled_weights_gives_clear_error():
    with pytest.raises(ChipPruneError, match="no weights ship"):
        load_model("cifar_resnet20", "bundled")


def test_checkpoint_formats_load(tmp_path):
    src = load_model("cifar_resnet20", None)[0]
    state = src.state_dict()
    # The reference-checkpoint layout: nested under state_dict, with DataParallel prefixes.
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "best_prec1": 91.7}, tmp_path / "a.th")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "b.safetensors"))
    for f in ("a.th", "b.safetensors"):
        dst = load_weights(load_model("cifar_resnet20", None)[0], tmp_path / f)
        assert all(torch.equal(dst.state_dict()[k], v) for k, v in state.items())


def test_mismatched_weights_name_the_tensors(tmp_path):
    torch.save(load_model("cifar_resnet20", None)[0].state_dict(), tmp_path / "r20.pt")
    with pytest.raises(ChipPruneError, match="layer1.3"):
        load_weights(load_model("cifar_resnet56", None)[0], tmp_path / "r20.pt")


def test_malicious_pickle_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": EvilPickle(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ChipPruneError, match="never runs"):
        read_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()


def test_corrupt_weights_file(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00\x01garbage")
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04truncated")
    for f in ("bad.safetensors", "bad.pt", "missing.pt"):
        with pytest.raises(ChipPruneError):
            read_state_dict(tmp_path / f)


def test_reference_checkpoints_load_unchanged(shared):
    for depth in (20, 32, 44, 56):
        files = list((shared / "weights" / "cifar10-resnet").glob(f"resnet{depth}-*.th"))
        load_weights(load_model(f"cifar_resnet{depth}", None)[0], files[0])


def test_models_that_cannot_be_pruned_are_listed_so_and_refused_at_once(capsys):
    from conftest import run_cli

    assert run_cli(["models"]) == 0
    listing = capsys.readouterr().out
    assert "swin_t" in listing and "vit_b_16" in listing
    rows = {line.split()[0]: line.split()[3] for line in listing.splitlines()[1:] if line.strip() and not line.startswith(" ")
            and len(line.split()) > 3}
    assert rows["swin_t"] == rows["vit_b_16"] == rows["shufflenet_v2_x1_0"] == "no"
    assert rows["resnet50"] == rows["cifar_resnet56"] == "yes"
    # Tracing Swin used to recurse until the kernel killed it: now one line, before any tracing.
    assert run_cli(["prune", "--model", "swin_t", "--weights", "none", "--sparsity", "0.3", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "swin_t cannot be pruned: a vision transformer" in err[0]
