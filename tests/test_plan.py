import pytest
import torch

from chipprune import ChipPruneError, get_model_spec, load_model
from chipprune.planning import channels_to_keep, parse_sparsity, ratios_for
from chipprune.surgery import prunable_groups, select_top


def test_parse_paper_strings():
    assert parse_sparsity("[0.]+[0.15]*2+[0.4]*27") == [0.0] + [0.15] * 2 + [0.4] * 27
    assert len(parse_sparsity("[0.]+[0.22]*2+[0.35]*18+[0.45]*36")) == 57
    assert parse_sparsity(" [0.1, 0.2]*2 + [.3] ") == [0.1, 0.2, 0.1, 0.2, 0.3]


@pytest.mark.parametrize("bad", ["", "[0.5", "[1.0]*2", "[a]", "0.3]", "[0.1]*x", "[]", "[0.1]*2*3", "[-0.1]"])
def test_malformed_sparsity_strings_are_refused(bad):
    with pytest.raises(ChipPruneError):
        parse_sparsity(bad)


def _groups(name):
    model = load_model(name, None)[0]
    spec = get_model_spec(name)
    _, groups, _ = prunable_groups(model, spec)
    return model, spec, groups


def test_resnet56_paper_plan_maps_entries_to_coupled_groups():
    model, spec, groups = _groups("cifar_resnet56")
    plan, notes = ratios_for("[0.]+[0.15]*2+[0.4]*27", spec, groups, model)
    assert plan["conv1"] == 0.15  # stem + stage-1 stream: one coupled group
    assert plan["layer2.0.conv2"] == 0.15  # stage-2 stream
    assert plan["layer3.0.conv2"] == 0.0  # stage-3 stream: never pruned by the paper strings
    assert all(plan[f"layer{s}.{b}.conv1"] == 0.4 for s in (1, 2, 3) for b in range(9))
    assert len(notes) == 1 and "stem" in notes[0]


def test_wrong_entry_count_explains_the_layout():
    model, spec, groups = _groups("cifar_resnet56")
    with pytest.raises(ChipPruneError, match=r"has 3 entries but cifar_resnet56 needs 30 .*stage-2 output"):
        ratios_for("[0.1]*3", spec, groups, model)


def test_single_ratio_applies_to_every_group():
    model, spec, groups = _groups("cifar_resnet20")
    plan, _ = ratios_for("0.3", spec, groups, model)
    assert set(plan.values()) == {0.3} and len(plan) == len(groups)
    with pytest.raises(ChipPruneError):
        ratios_for("1.5", spec, groups, model)


def test_a_plan_file_naming_one_layer_of_a_coupled_group_says_the_group_follows(tmp_path):
    model, spec, groups = _groups("cifar_resnet20")
    (tmp_path / "plan.json").write_text('{"layer2.1.conv2": 0.25, "layer1.*.conv1": 0.5}')
    plan, notes = ratios_for(str(tmp_path / "plan.json"), spec, groups, model)
    stream = next(g for g in groups if "layer2.1.conv2" in g.members)
    assert plan[stream.name] == 0.25 and plan["layer1.0.conv1"] == 0.5
    assert notes == [f"'layer2.1.conv2' shares its channels with {len(stream.members) - 1} more layer(s) "
                     f"(group '{stream.name}'): all of them are pruned at 0.25"]


def test_vgg_paper_plan():
    model, spec, groups = _groups("cifar_vgg16_bn")
    plan, _ = ratios_for("[0.21]*7+[0.75]*5", spec, groups, model)
    assert plan["features.conv0"] == 0.21 and plan["features.conv14"] == 0.75
    assert plan["features.conv16"] == 0.0 and plan["classifier.linear1"] == 0.0


def test_keep_rule_and_selection():
    assert channels_to_keep(16, 0.4) == 9 and channels_to_keep(64, 0.4) == 38 and channels_to_keep(16, 0.15) == 13
    assert channels_to_keep(3, 0.9) == 1  # never empty
    keep, remove = select_top(torch.tensor([0.5, 0.1, 0.9, 0.1, 0.3]), channels_to_keep(5, 0.4))
    assert keep == [0, 2, 4] and remove == [1, 3]
    keep, _ = select_top(torch.tensor([1.0, 1.0, 1.0, 1.0]), channels_to_keep(4, 0.5))
    assert keep == [0, 1]  # ties: lower index kept
