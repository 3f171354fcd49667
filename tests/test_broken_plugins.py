"""Broken and clashing plugins through the CLI and the conformance kit.

``test_registry.py`` covers the registry API; here each broken package is
installed next to a good one, and every command must keep working, name the
broken distribution and say why (one paragraph, no traceback).
"""

from __future__ import annotations

import json

import pytest

from _fake_components import BROKEN_IMPORT, GOOD, NOT_A_MODULE, UNTYPED
from conftest import run_cli, write_dist
from pretrain.testing import ComponentCheckError, check_component

GOOD_EPS = {
    "pretrain.backbones": {"TinyNet": "fakeplug_good.comps:TinyNet"},
    "pretrain.heads": {"PoolHead": "fakeplug_good.comps:PoolHead"},
    "pretrain.losses": {"PlainLoss": "fakeplug_good.comps:PlainLoss"},
    "pretrain.models": {"Net": "fakeplug_good.comps:Net"},
}

SPEC = """
[model]
type = "Net"
[model.backbone]
type = "{backbone}"
[model.head]
type = "PoolHead"
in_channels = 8
num_classes = 3
"""

BROKEN = {
    "import-error": ({"fakeplug_bad/m.py": BROKEN_IMPORT}, "fakeplug_bad.m:X", "ImportError: needs libfoo"),
    "missing-attribute": ({"fakeplug_bad/m.py": "Y = 1\n"}, "fakeplug_bad.m:X", "has no attribute 'X'"),
    "not-a-component": ({"fakeplug_bad/m.py": NOT_A_MODULE}, "fakeplug_bad.m:NotAModule", "not a torch.nn.Module"),
    "no-schema": ({"fakeplug_bad/m.py": UNTYPED}, "fakeplug_bad.m:Untyped", "has no type annotation"),
}


def install_good(site, name="fake-good"):
    write_dist(site, name, version="1.2.3", entry_points=GOOD_EPS,
               modules={"fakeplug_good/__init__.py": "", "fakeplug_good/comps.py": GOOD})


def write_spec(tmp_path, backbone):
    path = tmp_path / f"spec_{backbone.replace(':', '_').replace('-', '_')}.toml"
    path.write_text(SPEC.format(backbone=backbone), encoding="utf-8")
    return str(path)


def assert_one_paragraph(stderr: str) -> None:
    assert "Traceback" not in stderr and stderr.startswith("error:"), stderr


def install_broken(site):
    """One broken distribution per failure mode, each providing a backbone ``Bad<i>``."""
    for i, (modules, value, _) in enumerate(BROKEN.values()):
        pkg = f"fakeplug_bad{i}"
        write_dist(site, f"fake-bad{i}", version="0.9", entry_points={"pretrain.backbones": {f"Bad{i}": value.replace("fakeplug_bad", pkg)}},
                   modules={f"{pkg}/__init__.py": "", **{k.replace("fakeplug_bad", pkg): v for k, v in modules.items()}})


def test_cli_keeps_working_and_names_the_broken_package(site, tmp_path):
    install_good(site)
    install_broken(site)
    # a spec that uses none of them is unaffected
    res = run_cli("validate", write_spec(tmp_path, "TinyNet"))
    assert res.returncode == 0, res.stderr
    # each spec using a broken component: exit 1, which package, why (one paragraph)
    for i, (_, value, cause) in enumerate(BROKEN.values()):
        res = run_cli("validate", write_spec(tmp_path, f"Bad{i}"))
        assert res.returncode == 1
        assert_one_paragraph(res.stderr)
        flat = " ".join(res.stderr.split())
        assert "model.backbone.type" in flat and f"fake-bad{i} 0.9" in flat and cause in flat, flat
        assert f"Bad{i} = " + value.replace("fakeplug_bad", f"fakeplug_bad{i}") in flat
    # describe says why too; the detailed listing marks each broken one and keeps the rest
    res = run_cli("describe", "Bad0")
    assert res.returncode == 1 and "needs libfoo" in res.stderr
    assert_one_paragraph(res.stderr)
    res = run_cli("list-components", "--json", "--details", "--kind", "backbone")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    for i, (_, _, cause) in enumerate(BROKEN.values()):
        assert rows[f"Bad{i}"]["status"] == "broken" and cause in rows[f"Bad{i}"]["error"]
    assert rows["TinyNet"]["status"] == "ok" and rows["ResNet"]["status"] == "ok"


def test_duplicate_name_through_list_and_validate(site, tmp_path):
    install_good(site)
    write_dist(site, "other-dist", version="2.0",
               entry_points={"pretrain.backbones": {"TinyNet": "fakeplug_other.comps:TinyNet"}},
               modules={"fakeplug_other/__init__.py": "", "fakeplug_other/comps.py": GOOD})
    # both are listed, each with its distribution
    res = run_cli("list-components", "--json", "--kind", "backbone")
    assert res.returncode == 0, res.stderr
    tiny = sorted(r["distribution"] for r in json.loads(res.stdout) if r["name"] == "TinyNet")
    assert tiny == ["fake-good", "other-dist"]
    human = run_cli("list-components", "--kind", "backbone")
    assert human.returncode == 0 and "other-dist" in human.stdout and "fake-good" in human.stdout
    # the bare name is ambiguous: the error lists both qualified names and how to choose
    res = run_cli("validate", write_spec(tmp_path, "TinyNet"))
    assert res.returncode == 1
    assert_one_paragraph(res.stderr)
    flat = " ".join(res.stderr.split())
    assert "fake-good:TinyNet" in flat and "other-dist:TinyNet" in flat
    # the qualified name selects one
    res = run_cli("validate", write_spec(tmp_path, "other-dist:TinyNet"))
    assert res.returncode == 0, res.stderr
    res = run_cli("describe", "other-dist:TinyNet")
    assert res.returncode == 0 and "other-dist" in res.stdout


def test_duplicate_of_a_builtin_name_is_reported_not_fatal(site, tmp_path):
    write_dist(site, "shadow-dist", entry_points={"pretrain.backbones": {"ResNet_CIFAR": "fakeplug_sh.comps:TinyNet"}},
               modules={"fakeplug_sh/__init__.py": "", "fakeplug_sh/comps.py": GOOD})
    res = run_cli("list-components", "--json", "--kind", "backbone")
    assert res.returncode == 0
    assert {r["distribution"] for r in json.loads(res.stdout) if r["name"] == "ResNet_CIFAR"} == {
        "pretrain", "shadow-dist"}
    res = run_cli("describe", "pretrain:ResNet_CIFAR")
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("case", list(BROKEN))
def test_conformance_kit_names_the_broken_package(site, registry, case):
    modules, value, cause = BROKEN[case]
    write_dist(site, "fake-bad", version="0.9", entry_points={"pretrain.backbones": {"BadNet": value}},
               modules={"fakeplug_bad/__init__.py": "", **modules})
    with pytest.raises(ComponentCheckError) as err:
        check_component("BadNet")
    assert err.value.check == "resolve" and "fake-bad 0.9" in err.value.problem and cause in err.value.problem
    assert "reinstall" in err.value.fix
