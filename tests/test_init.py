"""Weight-init rules (``pretrain.init``): validation, layer matching, overrides, pretrained loading."""

from __future__ import annotations

import math

import jsonschema
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file
from torch import nn

import pretrain
from pretrain import PretrainError
from pretrain.init import (
    Constant,
    Kaiming,
    Normal,
    Pretrained,
    apply_init,
    init_rules_json_schema,
    load_pretrained,
    rule_to_toml,
    validate_init,
)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.fc = nn.Linear(8, 4)


def _errors(value):
    with pytest.raises(ValidationError) as info:
        validate_init(value)
    return [(e["loc"], e["msg"]) for e in info.value.errors()]


# ----------------------------------------------------------------------------- validation


def test_validate_accepts_list_single_table_and_models():
    rules = validate_init([{"type": "Kaiming", "layer": "Conv2d"}, {"type": "Constant", "val": 1, "layer": ["_BatchNorm"]}])
    assert isinstance(rules[0], Kaiming) and rules[0].layer == ["Conv2d"] and rules[0].mode == "fan_out"
    assert rules[1].val == 1.0
    assert validate_init({"type": "Normal", "std": 0.01, "layer": "Linear"}) == [Normal(std=0.01, layer="Linear")]
    assert validate_init([Constant(val=0, override="fc")])[0].override[0].name == "fc"


def test_rule_without_target_is_an_error_not_silence():
    (loc, msg), = _errors([{"type": "Normal", "std": 0.02}])
    assert loc == (0,) and "targets nothing" in msg and "layer" in msg and "override" in msg


def test_validation_locations_read_like_the_spec():
    # pydantic's union tags ("Normal", "name") are dropped from the path
    assert _errors([{"type": "Normal", "layer": "Linear", "std": -1}]) == [((0, "std"), "Input should be greater than or equal to 0")]
    assert _errors([{"type": "Pretrained"}])[0][0] == (0, "checkpoint")
    locs = [loc for loc, _ in _errors([{"type": "Normal", "override": [{"name": "fc", "type": "Constant"}]}])]
    assert locs == [(0, "override", 0, "val")]
    assert "does not match any of the expected tags" in _errors([{"type": "Nope"}])[0][1]
    assert _errors([{"type": "Normal", "layer": "Linear", "gain": 2}])[0][0] == (0, "gain")  # extra key
    assert "invalid regular expression" in _errors([{"type": "Pretrained", "checkpoint": "x", "key_map": [["(", ""]]}])[0][1]
    assert _errors([{"type": "Uniform", "layer": "Linear", "a": 2, "b": 1}])


def test_json_schema_matches_validation():
    schema = init_rules_json_schema()
    good = [{"type": "Kaiming", "layer": "Conv2d"}, {"type": "Normal", "std": 0.01, "override": "fc"},
            {"type": "Pretrained", "checkpoint": "w.safetensors", "prefix": "backbone."}]
    jsonschema.validate(good, schema)
    jsonschema.validate(good[0], schema)  # a single table is accepted too
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"type": "Kaiming", "layer": "Conv2d", "bogus": 1}], schema)


def test_rule_to_toml_shows_given_fields():
    rule = validate_init([{"type": "Normal", "std": 0.01, "override": ["fc", {"name": "x", "type": "Constant", "val": 0}]}])[0]
    assert rule_to_toml(rule) == '{type = "Normal", std = 0.01, override = [{name = "fc"}, {type = "Constant", name = "x", val = 0.0}]}'


# ----------------------------------------------------------------------------- value rules


def test_layer_matches_class_and_direct_bases():
    block = Block()
    apply_init(block, validate_init([{"type": "Constant", "val": 2, "bias": 0.5, "layer": "_BatchNorm"}]), loc="model.backbone", pretrained=False)
    assert torch.all(block.bn.weight == 2) and torch.all(block.bn.bias == 0.5)
    assert not torch.all(block.conv.weight == 2)


def test_each_initialiser_gives_its_distribution():
    torch.manual_seed(0)
    big = nn.Linear(400, 500)
    cases = {
        "Normal": ({"mean": 1.0, "std": 0.5}, lambda w: abs(w.mean() - 1) < 0.01 and abs(w.std() - 0.5) < 0.01),
        "TruncNormal": ({"std": 1.0, "a": -0.5, "b": 0.5}, lambda w: w.min() >= -0.5 and w.max() <= 0.5),
        "Uniform": ({"a": 2, "b": 3}, lambda w: w.min() >= 2 and w.max() <= 3),
        "Xavier": ({"distribution": "uniform"}, lambda w: w.abs().max() <= math.sqrt(6 / 900) + 1e-6),
        "Kaiming": ({"mode": "fan_in"}, lambda w: abs(w.std() - math.sqrt(2 / 400)) < 0.005),
    }
    for name, (kw, ok) in cases.items():
        apply_init(big, validate_init([{"type": name, "layer": "Linear", **kw}]), loc="m", pretrained=False)
        assert ok(big.weight.detach()), name
        assert torch.all(big.bias == 0), name


def test_bias_prob_sets_the_prior_bias():
    fc = nn.Linear(3, 2)
    apply_init(fc, [Constant(val=0, bias_prob=0.01, layer="Linear")], loc="m", pretrained=False)
    assert torch.allclose(fc.bias, torch.full((2,), -math.log(99)))


def test_override_inherits_or_brings_its_own_rule():
    block = Block()
    rules = validate_init([{"type": "Constant", "val": 3, "layer": "Conv2d", "override": ["fc", {"name": "bn", "type": "Constant", "val": 7}]}])
    apply_init(block, rules, loc="model.backbone", pretrained=False)
    assert torch.all(block.conv.weight == 3)
    assert torch.all(block.fc.weight == 3)  # name only: the parent's rule, whatever the class
    assert torch.all(block.bn.weight == 7)


def test_dotted_override_reaches_grandchildren():
    outer = nn.Sequential(Block())
    apply_init(outer, [Constant(val=5, override="0.fc")], loc="m", pretrained=False)
    assert torch.all(outer[0].fc.weight == 5) and not torch.all(outer[0].conv.weight == 5)


def test_rule_matching_no_layer_names_loc_rule_and_classes():
    with pytest.raises(PretrainError) as info:
        apply_init(Block(), validate_init([{"type": "Kaiming", "layer": "Conv2D"}]), loc="model.backbone.init", pretrained=False)
    msg = str(info.value)
    assert "model.backbone.init[0]" in msg and "Conv2D" in msg
    assert "BatchNorm2d, Block, Conv2d, Linear, ReLU" in msg


def test_rule_matching_only_weightless_layers_is_an_error():
    with pytest.raises(PretrainError, match="no weight or bias"):
        apply_init(Block(), [Normal(layer="ReLU")], loc="m", pretrained=False)


def test_override_of_missing_child_lists_children():
    with pytest.raises(PretrainError, match=r"no such child\. Children: conv, bn, act, fc"):
        apply_init(Block(), [Normal(override="head")], loc="m", pretrained=False)


def test_lenient_mode_skips_rules_that_do_not_apply():
    block = Block()
    before = block.conv.weight.clone()
    apply_init(block, [Normal(layer="GroupNorm"), Normal(override="missing")], loc="m", pretrained=False, strict=False)
    assert torch.equal(block.conv.weight, before)


def test_deterministic_under_seed_and_seed_sensitive():
    rules = validate_init([{"type": "Kaiming", "layer": "Conv2d"}, {"type": "TruncNormal", "std": 0.02, "layer": "Linear"}])

    def build(seed):
        torch.manual_seed(seed)
        block = Block()
        apply_init(block, rules, loc="m", pretrained=False)
        return block.state_dict()

    a, b, c = build(1), build(1), build(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv.weight"], c["conv.weight"])


def test_meta_tensors_are_skipped():
    with torch.device("meta"):
        block = Block()
    apply_init(block, validate_init([{"type": "Kaiming", "layer": "Conv2d"}]), loc="m", pretrained=False)
    assert block.conv.weight.is_meta


def test_passes_are_separate(tmp_path):
    path = tmp_path / "w.safetensors"
    source = nn.Linear(3, 2)
    save_file(dict(source.state_dict()), str(path))
    target = nn.Linear(3, 2)
    rules = [Constant(val=9, layer="Linear"), Pretrained(checkpoint=str(path))]
    apply_init(target, rules, loc="m", pretrained=False)
    assert torch.all(target.weight == 9)  # value pass ignores Pretrained
    apply_init(target, rules, loc="m", pretrained=True)
    assert torch.equal(target.weight, source.weight)  # pretrained pass loads, value rules not re-run


def test_build_applies_class_defaults_and_spec_rules():
    spec = {"type": "LinearClsHead", "num_classes": 50, "in_channels": 400}
    head = pretrain.build_model({"model": {"type": "ImageClassifier", "backbone": {"type": "ResNet_CIFAR", "depth": 18},
                                           "neck": {"type": "GlobalAveragePooling"}, "head": spec}}, seed=0).head
    assert abs(head.fc.weight.std().item() - 0.01) < 0.001 and torch.all(head.fc.bias == 0)  # Normal(Linear, 0.01)
    spec["init"] = [{"type": "Constant", "val": 0.5, "layer": "Linear"}]
    head = pretrain.build_model({"model": {"type": "ImageClassifier", "backbone": {"type": "ResNet_CIFAR", "depth": 18},
                                           "neck": {"type": "GlobalAveragePooling"}, "head": spec}}).head
    assert torch.all(head.fc.weight == 0.5)


# ----------------------------------------------------------------------------- pretrained


def _classifier_checkpoint(tmp_path):
    full = nn.ModuleDict({"backbone": Block(), "head": nn.Linear(4, 2)})
    path = tmp_path / "cls.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    return full, path


def test_pretrained_round_trip_with_prefix(tmp_path, capfd, caplog):
    from rich.console import Console

    full, path = _classifier_checkpoint(tmp_path)
    block = Block()
    report = load_pretrained(block, Pretrained(checkpoint=str(path), prefix="backbone"), loc="model.backbone.init[0]",
                             console=Console(stderr=True))
    assert report.clean and set(report.loaded) == set(block.state_dict())
    for key, value in block.state_dict().items():
        assert torch.equal(value, full["backbone"].state_dict()[key])
    # Library use without a console: one log record, nothing printed.
    with caplog.at_level("INFO", logger="pretrain.init"):
        load_pretrained(Block(), Pretrained(checkpoint=str(path), prefix="backbone"), loc="model.backbone.init[0]")
    assert any("Pretrained weights for model.backbone.init[0]" in r.getMessage() for r in caplog.records)
    err = capfd.readouterr().err
    assert "Pretrained weights for model.backbone.init[0]" in err and "loaded" in err


def test_prefix_matching_nothing_lists_prefixes(tmp_path):
    _, path = _classifier_checkpoint(tmp_path)
    with pytest.raises(PretrainError, match=r"no checkpoint key starts with prefix 'neck\.'.*'backbone\.', 'head\.'"):
        load_pretrained(Block(), Pretrained(checkpoint=str(path), prefix="neck."), loc="m")


def test_strict_mismatch_names_keys_and_loads_nothing(tmp_path):
    _, path = _classifier_checkpoint(tmp_path)
    block = Block()
    block.fc = nn.Linear(8, 5)  # head width differs from the checkpoint's (4)
    block.extra = nn.Linear(2, 2)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    with pytest.raises(PretrainError) as info:
        load_pretrained(block, Pretrained(checkpoint=str(path), prefix="backbone."), loc="model.backbone.init[0]")
    msg = str(info.value)
    assert "missing extra.weight, extra.bias" in msg
    assert "fc.weight (4, 8) vs (5, 8)" in msg and "strict = false" in msg
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())


def test_non_strict_loads_what_matches_and_reports_the_rest(tmp_path):
    full, path = _classifier_checkpoint(tmp_path)
    block = Block()
    block.fc = nn.Linear(8, 5)
    report = load_pretrained(block, Pretrained(checkpoint=str(path), strict=False, key_map=[["^backbone\\.", ""]]), loc="m")
    assert report.mismatched == ["fc.weight", "fc.bias"] and report.shapes["fc.weight"] == ((4, 8), (5, 8))
    assert report.unexpected == ["head.bias", "head.weight"] and report.missing == []
    assert torch.equal(block.conv.weight, full["backbone"].conv.weight)


def test_key_map_renames_and_drops(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"module.body.weight": torch.ones(2, 3), "module.body.bias": torch.zeros(2), "aux.x": torch.ones(1)}, str(path))
    fc = nn.Linear(3, 2)
    rule = Pretrained(checkpoint=str(path), key_map=[["^module\\.", ""], ["^body\\.", ""], ["^aux\\..*", ""]])
    assert load_pretrained(fc, rule, loc="m").clean and torch.all(fc.weight == 1)


def test_default_key_map_strips_ddp_prefix(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"module.weight": torch.ones(2, 3), "module.bias": torch.zeros(2)}, str(path))
    fc = nn.Linear(3, 2)
    assert load_pretrained(fc, Pretrained(checkpoint=str(path)), loc="m").clean


def test_pth_is_read_weights_only(tmp_path):
    fc = nn.Linear(3, 2)
    good = tmp_path / "w.pth"
    torch.save({"state_dict": fc.state_dict()}, good)  # MMEngine-style nesting
    target = nn.Linear(3, 2)
    load_pretrained(target, Pretrained(checkpoint=str(good)), loc="m")
    assert torch.equal(target.weight, fc.weight)
    evil = tmp_path / "evil.pt"
    torch.save({"weight": fc.weight, "obj": Block}, evil)  # a pickled class, not a tensor
    with pytest.raises(PretrainError, match="weights_only"):
        load_pretrained(target, Pretrained(checkpoint=str(evil)), loc="m")


def test_empty_or_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(PretrainError) as info:
        load_pretrained(Block(), Pretrained(checkpoint="", prefix="backbone."), loc="model.backbone.init[0]")
    assert "empty `checkpoint`" in str(info.value)
    assert "--set 'model.backbone.init=[{type = \"Pretrained\", checkpoint = \"PATH.safetensors\", prefix = \"backbone.\"}]'" in str(info.value)
    with pytest.raises(PretrainError, match="does not exist"):
        load_pretrained(Block(), Pretrained(checkpoint=str(tmp_path / "nope.safetensors")), loc="m")
    bad = tmp_path / "w.npz"
    bad.write_bytes(b"x")
    with pytest.raises(PretrainError, match="unsupported checkpoint format"):
        load_pretrained(Block(), Pretrained(checkpoint=str(bad)), loc="m")


class Resizing(nn.Module):
    """Adapts a stored (1, n) embedding to its own width in a load pre-hook, like a ViT's pos_embed."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.zeros(1, width))
        self._register_load_state_dict_pre_hook(self._resize)

    def _resize(self, state, prefix, *args):
        key = prefix + "embed"
        if key in state and state[key].shape != self.embed.shape:
            state[key] = nn.functional.interpolate(state[key][None], size=self.embed.shape[-1], mode="linear")[0]


def test_load_pre_hooks_run_before_shapes_are_compared(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"inner.embed": torch.arange(4.0)[None]}, str(path))
    model = nn.Module()
    model.inner = Resizing(8)
    assert load_pretrained(model, Pretrained(checkpoint=str(path)), loc="m").clean
    assert model.inner.embed.shape == (1, 8) and model.inner.embed[0, -1] == 3


def test_pretrained_lands_after_value_rules_when_built(tmp_path):
    source = pretrain.build_model({"model": {"type": "ImageClassifier", "backbone": {"type": "ResNet_CIFAR", "depth": 18},
                                             "neck": {"type": "GlobalAveragePooling"},
                                             "head": {"type": "LinearClsHead", "num_classes": 10, "in_channels": 512}}}, seed=1)
    path = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    spec = {"type": "ResNet_CIFAR", "depth": 18, "init": [{"type": "Constant", "val": 0, "layer": "Conv2d"},
                                                           {"type": "Pretrained", "checkpoint": str(path), "prefix": "backbone."}]}
    model = pretrain.build_model({"model": {"type": "ImageClassifier", "backbone": spec, "neck": {"type": "GlobalAveragePooling"},
                                            "head": {"type": "LinearClsHead", "num_classes": 10, "in_channels": 512}}}, seed=2)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, source.backbone.state_dict()[key]), key
