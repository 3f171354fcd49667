"""Spec loading, extends/overrides and validation errors with exact paths."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _fake_components import GOOD
from conftest import write_dist
from pretrain import SpecError, load_spec, validate_spec
from pretrain.engine.preflight import check_model

EPS = {
    "pretrain.backbones": {"TinyNet": "fakeplug_good.comps:TinyNet"},
    "pretrain.heads": {"PoolHead": "fakeplug_good.comps:PoolHead"},
    "pretrain.losses": {"PlainLoss": "fakeplug_good.comps:PlainLoss", "DenseLoss": "fakeplug_good.comps:DenseLoss"},
    "pretrain.models": {"Net": "fakeplug_good.comps:Net"},
}

VALID = {
    "model": {
        "type": "Net",
        "backbone": {"type": "TinyNet", "channels": 8, "depth": 2},
        "head": {"type": "PoolHead", "in_channels": 8, "num_classes": 3, "loss": {"type": "PlainLoss"}},
    }
}


@pytest.fixture
def fake(site):
    write_dist(site, "fake-good", entry_points=EPS,
               modules={"fakeplug_good/__init__.py": "", "fakeplug_good/comps.py": GOOD})
    return site


def mutate(path: str, value=..., delete: bool = False) -> dict:
    spec = copy.deepcopy(VALID)
    keys = path.split(".")
    node = spec
    for k in keys[:-1]:
        node = node[k]
    if delete:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return spec


def errors_of(spec) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as err:
        validate_spec(spec)
    return [(i.loc, i.msg) for i in err.value.issues]


MALFORMED = [
    ("no-model", {"data2": {}}, "model"),
    ("model-scalar", {"model": 3}, "model"),
    ("model-list", {"model": []}, "model"),
    ("model-no-type", mutate("model.type", delete=True), "model.type"),
    ("model-type-int", mutate("model.type", 3), "model.type"),
    ("model-type-unknown", mutate("model.type", "Nett"), "model.type"),
    ("model-type-import-path", mutate("model.type", "fakeplug_good.comps:Net"), "model.type"),
    ("top-level-typo", {**VALID, "modle": {}}, "modle"),
    ("name-not-string", {**VALID, "name": 3}, "name"),
    ("backbone-missing", mutate("model.backbone", delete=True), "model.backbone"),
    ("backbone-list", mutate("model.backbone", [1, 2]), "model.backbone"),
    ("backbone-type-unknown", mutate("model.backbone.type", "TinyNat"), "model.backbone.type"),
    ("backbone-type-wrong-kind", mutate("model.backbone.type", "PlainLoss"), "model.backbone.type"),
    ("backbone-unknown-field", mutate("model.backbone.channel", 4), "model.backbone.channel"),
    ("backbone-constraint", mutate("model.backbone.channels", 0), "model.backbone.channels"),
    ("backbone-wrong-type", mutate("model.backbone.channels", "eight"), "model.backbone.channels"),
    ("backbone-float-for-int", mutate("model.backbone.channels", 2.5), "model.backbone.channels"),
    ("backbone-literal-int", mutate("model.backbone.depth", 3), "model.backbone.depth"),
    ("backbone-literal-str", mutate("model.backbone.act", "tanh"), "model.backbone.act"),
    ("head-missing-field", mutate("model.head.in_channels", delete=True), "model.head.in_channels"),
    ("head-negative-classes", mutate("model.head.num_classes", -1), "model.head.num_classes"),
    ("loss-unknown-type", mutate("model.head.loss.type", "PlainLos"), "model.head.loss.type"),
    ("loss-as-string", mutate("model.head.loss", "PlainLoss"), "model.head.loss"),
    ("loss-unknown-field", mutate("model.head.loss.weight", 2.0), "model.head.loss.weight"),
    ("loss-weight-type", mutate("model.head.loss.loss_weight", "x"), "model.head.loss.loss_weight"),
    ("model-unknown-field", mutate("model.neck", {"type": "X"}), "model.neck"),
    ("init-not-rules", mutate("model.backbone.init", 5), "model.backbone.init"),
]


@pytest.mark.parametrize(("spec", "loc"), [(s, loc) for _, s, loc in MALFORMED], ids=[i for i, _, _ in MALFORMED])
def test_malformed_spec_reports_exact_loc(fake, spec, loc):
    locs = [loc_ for loc_, _ in errors_of(spec)]
    assert loc in locs, locs


def test_messages_are_helpful(fake):
    ((_, msg),) = errors_of(mutate("model.backbone.channel", 4))
    assert "did you mean 'channels'" in msg and "accepted fields" in msg
    ((_, msg),) = errors_of(mutate("model.type", "Nett"))
    assert "did you mean 'Net'" in msg
    ((_, msg),) = errors_of(mutate("model.backbone.type", "PlainLoss"))
    assert "exists as a loss" in msg
    ((_, msg),) = errors_of(mutate("model.backbone.depth", 3))
    assert "got 3" in msg


def test_every_error_reported_at_once(fake):
    spec = mutate("model.backbone.channels", 0)
    spec["model"]["head"]["num_classes"] = 0
    spec["model"]["head"]["loss"]["type"] = "Nope"
    locs = {loc for loc, _ in errors_of(spec)}
    assert {"model.backbone.channels", "model.head.num_classes", "model.head.loss.type"} <= locs


def test_valid_spec_builds(fake):
    import pretrain

    model = pretrain.build(VALID, seed=0)
    assert type(model).__name__ == "Net" and type(model.head.loss_module).__name__ == "PlainLoss"


def test_default_nested_spec_is_used(fake):
    spec = mutate("model.head.loss", delete=True)
    node = validate_spec(spec).model.child("head").child("loss")
    assert node.type_name == "PlainLoss"


def test_shape_check_names_both_sides(fake):
    spec = validate_spec(mutate("model.head.in_channels", 16))
    report = check_model(spec, input_size=[16, 16])
    (issue,) = report.issues
    assert issue.loc == "model.head.in_channels"
    assert "16" in issue.msg and "8 channels" in issue.msg and "model.backbone" in issue.msg


def test_target_kind_check(fake):
    spec = validate_spec(mutate("model.head.loss", {"type": "DenseLoss"}))
    (issue,) = check_model(spec, input_size=[16, 16]).issues
    assert issue.loc == "model.head.loss" and "dense" in issue.msg and "model.head" in issue.msg


def test_meta_check_counts_params_without_memory(fake):
    report = check_model(validate_spec(VALID), input_size=[16, 16])
    assert report.issues == []
    assert report.params == (3 * 8 * 9 + 8) + (8 * 8 * 9 + 8) + (8 * 3 + 3)


# -- files, extends, overrides -------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_extends_child_wins_and_type_change_replaces(tmp_path):
    write(tmp_path / "base.toml", """
[model]
type = "Net"
[model.head]
type = "PoolHead"
in_channels = 8
num_classes = 3
[model.head.loss]
type = "DenseLoss"
loss_weight = 2.0
[train]
tags = [1, 2, 3]
""")
    child = write(tmp_path / "child.toml", """
extends = "base.toml"
[model.head]
num_classes = 5
[model.head.loss]
type = "PlainLoss"
[train]
tags = [9]
""")
    data = load_spec(child)
    assert data["model"]["head"] == {"type": "PoolHead", "in_channels": 8, "num_classes": 5, "loss": {"type": "PlainLoss"}}
    assert data["train"]["tags"] == [9]
    assert "extends" not in data


def test_extends_chain_relative_paths_and_json(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "root.json", json.dumps({"model": {"type": "Net", "x": 1}}))
    write(tmp_path / "sub" / "mid.toml", 'extends = ["../root.json"]\n[model]\ny = 2\n')
    leaf = write(tmp_path / "leaf.toml", 'extends = ["sub/mid.toml"]\n[model]\nx = 3\n')
    assert load_spec(leaf)["model"] == {"type": "Net", "x": 3, "y": 2}


def test_extends_errors(tmp_path):
    a = write(tmp_path / "a.toml", 'extends = "b.toml"\n')
    write(tmp_path / "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(SpecError, match="cycle in extends: a.toml -> b.toml -> a.toml"):
        load_spec(a)
    missing = write(tmp_path / "m.toml", 'extends = ["nope.toml"]\n')
    with pytest.raises(SpecError) as err:
        load_spec(missing)
    assert err.value.issues[0].loc == "extends[0]" and "nope.toml" in err.value.issues[0].msg
    bad = write(tmp_path / "bad.toml", "extends = 3\n")
    with pytest.raises(SpecError, match="must be a path"):
        load_spec(bad)


def test_syntax_errors_name_the_file(tmp_path):
    with pytest.raises(SpecError, match="TOML syntax error") as err:
        load_spec(write(tmp_path / "x.toml", "[model\n"))
    assert err.value.source.endswith("x.toml")
    with pytest.raises(SpecError, match="JSON syntax error at line 1"):
        load_spec(write(tmp_path / "x.json", "{bad"))
    with pytest.raises(SpecError, match=".toml or .json"):
        load_spec(write(tmp_path / "x.yaml", "a: 1"))
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.toml")


def test_overrides_are_toml_literals(tmp_path):
    spec = write(tmp_path / "s.toml", '[model]\ntype = "Net"\nlist = [1, 2]\n')
    data = load_spec(spec, [
        "model.a=3", "model.b=2.5", "model.c=true", 'model.d="text"', "model.e=[1, 2]",
        "model.f={type = 'X', k = 1}", "model.g=bare_word", "model.list.1=7", "model.new.deep=1",
    ])
    m = data["model"]
    assert (m["a"], m["b"], m["c"], m["d"], m["e"]) == (3, 2.5, True, "text", [1, 2])
    assert m["f"] == {"type": "X", "k": 1} and m["g"] == "bare_word"
    assert m["list"] == [1, 7] and m["new"] == {"deep": 1}


@pytest.mark.parametrize("text", ["model", "=3", "model..a=1", "model.type.x=1", "model.list.5=1"])
def test_bad_overrides(tmp_path, text):
    spec = write(tmp_path / "s.toml", '[model]\ntype = "Net"\nlist = [1]\n')
    with pytest.raises(SpecError) as err:
        load_spec(spec, [text])
    assert err.value.issues[0].loc == f"--set {text}"


def test_override_is_validated_like_file_values(fake, tmp_path):
    spec = write(tmp_path / "s.json", json.dumps(VALID))
    with pytest.raises(SpecError) as err:
        validate_spec(load_spec(spec, ["model.backbone.channels=-1"]))
    assert [i.loc for i in err.value.issues] == ["model.backbone.channels"]


# -- property-based: the validator never crashes ------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 600) | st.floats(allow_nan=True) | st.text(max_size=12)
    | st.sampled_from(["Net", "TinyNet", "PoolHead", "PlainLoss", "DenseLoss", "ResNet", "relu"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["type", "channels", "depth", "act", "in_channels", "num_classes", "loss",
                         "backbone", "head", "init", "loss_weight", "x"]), inner, max_size=4),
    max_leaves=12,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_validator_never_crashes(fake, data):
    spec = copy.deepcopy(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(spec) if p]
        path = data.draw(st.sampled_from(paths))
        node = spec
        for k in path[:-1]:
            node = node[k]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del node[path[-1]]
        elif action == "replace":
            node[path[-1]] = data.draw(json_values)
        elif isinstance(node.get(path[-1]), dict):
            node[path[-1]][data.draw(st.text(min_size=1, max_size=6))] = data.draw(json_values)
        if not isinstance(spec.get("model"), dict):
            break
    try:
        validated = validate_spec(spec)
    except SpecError as exc:
        assert exc.issues and all(isinstance(i.loc, str) and i.msg for i in exc.issues)
        return
    report = check_model(validated, input_size=[8, 8])
    assert isinstance(report.issues, list)
