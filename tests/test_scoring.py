import pytest
import torch
import torch.nn as nn

from chipprune import ChipPruneError, Calibration, get_model_spec, load_model, score
from chipprune.scoring.independence import channel_independence, channel_independence_per_image
from chipprune.surgery import prunable_groups
from chipprune.scoring import UNSTABLE_BELOW, score_groups, spearman

from chipprune.reporting.console import score_summary


def test_spearman_known_answers():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, x * 10 + 3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    # Ties get average ranks: x ranks [1, 2.5, 2.5, 4], y ranks [1, 3, 2, 4] -> rho = 4.5 / sqrt(4.5 * 5).
    assert spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0, 4.0])) == pytest.approx(
        4.5 / (4.5 * 5.0) ** 0.5
    )
    assert spearman(torch.ones(4), x[:4]) == 1.0  # a constant side carries no ranking to disagree with


def test_per_image_scores_average_to_the_mean():
    torch.manual_seed(0)
    maps = torch.relu(torch.randn(6, 12, 4, 4))
    ci, nuclear = channel_independence_per_image(maps)
    assert ci.shape == (6, 12) and nuclear.shape == (6,)
    assert torch.allclose(ci.mean(0), channel_independence(maps))
    assert torch.allclose(nuclear, torch.linalg.matrix_norm(maps.reshape(6, 12, -1).double(), ord="nuc"))


def _batches(n_batches, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 32, 32, generator=g), torch.zeros(batch, dtype=torch.long)) for _ in range(n_batches)]


def test_streaming_equals_scoring_all_images_at_once():
    model = load_model("cifar_resnet20", None)[0].eval()
    _, groups, _ = prunable_groups(model, get_model_spec("cifar_resnet20"))
    batches = _batches(3, 8)
    streamed = score_groups(model, groups, batches, channel_independence_per_image, progress=False)
    at_once = score_groups(model, groups, [(torch.cat([b[0] for b in batches]), None)], channel_independence_per_image, progress=False)
    for name in streamed:
        assert torch.allclose(streamed[name].scores, at_once[name].scores, rtol=1e-9)
        assert streamed[name].images == 24


def test_interchangeable_channels_give_an_instability_warning():
    # Pure-noise channels are statistically identical: two halves of the images rank them at random.
    from chipprune.surgery import ChannelGroup, FeatureSource

    idx = torch.arange(16)
    group = ChannelGroup("noise", 16, ["noise"], [FeatureSource("0", "input", idx, idx)])
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(8, 16, 6, 6, generator=g), None) for _ in range(2)]
    scores = score_groups(nn.Sequential(nn.Conv2d(16, 2, 1)), [group], batches, channel_independence_per_image, progress=False)
    assert scores["noise"].split_half_spearman < UNSTABLE_BELOW
    assert "warning: 1 group(s)" in score_summary(scores, 16, 1.0, "x.safetensors")


def test_real_weights_rank_stably_on_640_images(default_job):
    # The default job (conftest) scored every group it prunes on the same 640 images, and its record
    # keeps each one's split-half correlation; the groups it leaves whole are scored here.
    import json

    rho = {g["group"]: g["split_half_spearman"] for g in json.loads((default_job.out / "pruning.json").read_text())["groups"]}
    model, spec = load_model("cifar_resnet56", "bundled")
    _, groups, _ = prunable_groups(model, spec)
    assert len(rho) == 29 and rho.keys() < {g.name for g in groups}
    scores = score(model, spec, Calibration(images=640), groups=[g for g in groups if g.name not in rho], progress=False)
    rho |= {name: s.split_half_spearman for name, s in scores.items()}
    assert len(rho) == len(groups) == 30 and min(rho.values()) > 0.9


def test_nan_feature_map_names_the_layer_and_hooks_are_removed():
    model = load_model("cifar_resnet20", None)[0].eval()
    _, groups, _ = prunable_groups(model, get_model_spec("cifar_resnet20"))
    model.layer2[1].bn1.weight.data[3] = float("nan")
    with pytest.raises(ChipPruneError, match=r"layer2\.1\.conv2 .*NaN"):
        score_groups(model, groups, _batches(1, 2), channel_independence_per_image, progress=False)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_scoring_leaves_the_model_as_it_found_it():
    from chipprune.surgery import ChannelGroup, FeatureSource

    model = load_model("cifar_resnet20", None)[0].train()
    _, groups, _ = prunable_groups(model, get_model_spec("cifar_resnet20"))
    assert model.training  # tracing restores the mode too
    score_groups(model, groups, _batches(1, 2), channel_independence_per_image, progress=False)
    assert model.training
    # A group naming a layer the model lacks is refused before any hook is placed.
    ghost = ChannelGroup("ghost", 16, ["nowhere"], [FeatureSource("nowhere", "output", torch.arange(16), torch.arange(16))])
    with pytest.raises(ChipPruneError, match="no module named 'nowhere'"):
        score_groups(model, [*groups, ghost], _batches(1, 2), channel_independence_per_image, progress=False)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_group_without_visible_map_is_refused():
    from chipprune.surgery import ChannelGroup

    with pytest.raises(ChipPruneError, match="no feature map"):
        score_groups(nn.Conv2d(3, 4, 1), [ChannelGroup("x", 4, ["x"], [])], _batches(1, 2), channel_independence_per_image, progress=False)


class _TwoViews(nn.Module):
    """Two layers see the same channels: one directly, one scaled by 2 and permuted."""

    def __init__(self, perm):
        super().__init__()
        self.perm = perm
        self.a = nn.Conv2d(6, 1, 1)
        self.b = nn.Conv2d(6, 1, 1)

    def forward(self, x):
        return self.a(x) + self.b(2.0 * x[:, self.perm])


def test_group_score_is_the_mean_of_nuclear_normalised_ci_over_its_maps():
    from chipprune.surgery import ChannelGroup, FeatureSource

    torch.manual_seed(1)
    perm = torch.randperm(6)
    x = torch.relu(torch.randn(8, 6, 5, 5))
    x[:, 2] = 0.5 * x[:, 4]  # a redundant channel, so the scores are not all alike
    ident = torch.arange(6)
    # Map b's channel i carries root channel perm[i].
    group = ChannelGroup("g", 6, ["g"], [FeatureSource("a", "input", ident, ident), FeatureSource("b", "input", ident, perm)])
    got = score_groups(_TwoViews(perm), [group], [(x, None)], channel_independence_per_image, progress=False)["g"]
    ci, nuclear = channel_independence_per_image(x)
    expected = ci.mean(0) / nuclear.mean()  # both maps give this: CI and nuclear norm scale alike
    assert torch.allclose(got.scores, expected, rtol=1e-9)
    assert sorted(got.maps) == ["a:input", "b:input"]
    assert got.scores[2] < got.scores[[0, 1, 3, 5]].min()


class _InPlaceAfterUse(nn.Module):
    """conv2 consumes a map that is then changed in place (as some user code does)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        out = self.conv2(h)
        h.mul_(0.0)  # scores must come from the map conv2 saw, not from this
        return out


def test_maps_changed_in_place_after_use_are_scored_as_seen(monkeypatch):
    from chipprune.surgery import ChannelGroup, FeatureSource
    import chipprune.scoring.streaming as scoring

    idx = torch.arange(6)
    group = ChannelGroup("h", 6, ["conv1"], [FeatureSource("conv2", "input", idx, idx)])
    model = _InPlaceAfterUse().eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected = channel_independence(torch.relu(model.conv1(x)))
    for pending_bytes in (0, 2**30):  # scored at once, or held until the batch ends
        monkeypatch.setattr(scoring, "PENDING_BYTES", pending_bytes)
        got = score_groups(model, [group], [(x, None)], channel_independence_per_image, progress=False)["h"].scores
        nuclear = channel_independence_per_image(torch.relu(model.conv1(x)).detach())[1].mean()
        assert torch.allclose(got, expected / nuclear, rtol=1e-9)
