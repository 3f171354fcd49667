"""Discovery through real (temporary) installed distributions, duplicates, broken plugins."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from _fake_components import BROKEN_IMPORT, GOOD, HOOKS, NOT_A_MODULE, UNTYPED
from conftest import run_cli, write_dist
from pretrain import ComponentLookupError, PluginLoadError
from pretrain.registry.plugins import load_plugins
from pretrain.registry.registry import Registry

GOOD_EPS = {
    "pretrain.backbones": {"TinyNet": "fakeplug_good.comps:TinyNet"},
    "pretrain.heads": {"PoolHead": "fakeplug_good.comps:PoolHead"},
    "pretrain.losses": {"PlainLoss": "fakeplug_good.comps:PlainLoss", "DenseLoss": "fakeplug_good.comps:DenseLoss"},
    "pretrain.models": {"Net": "fakeplug_good.comps:Net"},
}


def install_good(site, name="fake-good", version="1.2.3"):
    return write_dist(
        site,
        name,
        version=version,
        entry_points=GOOD_EPS,
        modules={"fakeplug_good/__init__.py": "", "fakeplug_good/comps.py": GOOD},
    )


def test_discovers_third_party_and_builtin(site, registry):
    install_good(site)
    names = {(r.kind, r.name, r.distribution) for r in registry.entries()}
    assert ("backbone", "TinyNet", "fake-good") in names
    assert ("backbone", "ResNet", "pretrain") in names
    rec = registry.resolve("backbone", "TinyNet")
    assert rec.version == "1.2.3" and rec.value == "fakeplug_good.comps:TinyNet"
    # listing never imported the plugin module
    assert "fakeplug_good.comps" not in sys.modules
    cls = registry.load(rec)
    assert cls.__name__ == "TinyNet"


def test_duplicate_distribution_on_two_paths_is_counted_once(site, tmp_path, monkeypatch, registry):
    install_good(site)
    copy = tmp_path / "site2"
    shutil.copytree(site, copy)
    monkeypatch.syspath_prepend(str(copy))
    assert len([r for r in registry.entries("backbone") if r.name == "TinyNet"]) == 1
    registry.resolve("backbone", "TinyNet")  # not ambiguous


def test_same_name_from_two_distributions(site, registry):
    install_good(site)
    write_dist(
        site,
        "other-dist",
        entry_points={"pretrain.backbones": {"TinyNet": "fakeplug_other.comps:TinyNet"}},
        modules={"fakeplug_other/__init__.py": "", "fakeplug_other/comps.py": GOOD},
    )
    with pytest.raises(ComponentLookupError) as err:
        registry.resolve("backbone", "TinyNet")
    assert "fake-good:TinyNet" in err.value.message and "other-dist:TinyNet" in err.value.message
    assert registry.resolve("backbone", "other-dist:TinyNet").distribution == "other-dist"
    assert registry.resolve("backbone", "fake_good:TinyNet").distribution == "fake-good"


@pytest.mark.parametrize(
    ("modules", "value", "needle"),
    [
        ({"fakeplug_bad/__init__.py": "", "fakeplug_bad/m.py": BROKEN_IMPORT}, "fakeplug_bad.m:X", "needs libfoo"),
        ({"fakeplug_bad/__init__.py": "", "fakeplug_bad/m.py": "Y = 1\n"}, "fakeplug_bad.m:X", "has no attribute 'X'"),
        ({"fakeplug_bad/__init__.py": "", "fakeplug_bad/m.py": NOT_A_MODULE}, "fakeplug_bad.m:NotAModule", "not a torch.nn.Module"),
        ({"fakeplug_bad/__init__.py": "", "fakeplug_bad/m.py": UNTYPED}, "fakeplug_bad.m:Untyped", "no type annotation"),
        ({"fakeplug_bad/__init__.py": "", "fakeplug_bad/m.py": "X = 3\n"}, "fakeplug_bad.m:X", "not a class"),
        ({}, "fakeplug_missing.m:X", "No module named"),
    ],
    ids=["import-error", "missing-attr", "not-module", "no-schema", "not-class", "missing-module"],
)
def test_broken_plugin_is_reported_not_fatal(site, registry, modules, value, needle):
    install_good(site)
    write_dist(site, "fake-bad", version="0.9", entry_points={"pretrain.backbones": {"BadNet": value}}, modules=modules)
    rec = registry.resolve("backbone", "BadNet")
    with pytest.raises(PluginLoadError) as err:
        registry.load(rec)
    msg = err.value.message
    assert "fake-bad 0.9" in msg and f"BadNet = {value}" in msg and needle in msg
    # unrelated components keep working
    assert registry.get("backbone", "TinyNet").__name__ == "TinyNet"
    assert [f.record.name for f in registry.failures()] == ["BadNet"]


def test_strict_mode_raises_with_cause(site, registry, monkeypatch):
    write_dist(site, "fake-bad", entry_points={"pretrain.backbones": {"BadNet": "fakeplug_bad.m:X"}},
               modules={"fakeplug_bad/__init__.py": "", "fakeplug_bad/m.py": BROKEN_IMPORT})
    monkeypatch.setenv("PRETRAIN_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError) as err:
        registry.get("backbone", "BadNet")
    assert isinstance(err.value.__cause__, ImportError)


def test_autoload_off_and_allowlist(site, registry, monkeypatch):
    install_good(site)
    monkeypatch.setenv("PRETRAIN_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry.refresh()
    names = {r.name for r in registry.entries()}
    assert "TinyNet" not in names and "ResNet" in names
    monkeypatch.delenv("PRETRAIN_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("PRETRAIN_PLUGINS", "some-other-dist")
    registry.refresh()
    assert "TinyNet" not in {r.name for r in registry.entries()}
    monkeypatch.setenv("PRETRAIN_PLUGINS", "fake_good")
    registry.refresh()
    assert "TinyNet" in {r.name for r in registry.entries()}


def test_unknown_type_did_you_mean_and_broken_note(site, registry):
    install_good(site)
    # A name no built-in uses (the built-ins now include ResNeXt).
    write_dist(site, "fake-bad", entry_points={"pretrain.backbones": {"ResNeSt": "fakeplug_bad.m:X"}},
               modules={"fakeplug_bad/__init__.py": "", "fakeplug_bad/m.py": BROKEN_IMPORT})
    with pytest.raises(PluginLoadError):
        registry.get("backbone", "ResNeSt")
    msg = registry.unknown_message("backbone", "TinyNat")
    assert "did you mean 'TinyNet'" in msg
    assert "fake-bad" in msg and "needs libfoo" in msg
    assert "exists as a loss" in registry.unknown_message("backbone", "PlainLoss")


def test_register_unregister_in_process(registry):
    from torch import nn

    class Scale(nn.Module):
        """Scales.

        Args:
            factor: Factor.
        """

        def __init__(self, *, factor: float = 2.0) -> None:
            super().__init__()
            self.factor = factor

    rec = registry.register("neck", "Scale", Scale)
    assert registry.get("neck", "Scale") is Scale and rec.source == "runtime"
    with pytest.raises(ValueError, match="already registered"):
        registry.register("neck", "Scale", type("Other", (nn.Module,), {}))
    with pytest.raises(TypeError, match="not a torch.nn.Module"):
        registry.register("neck", "Bad", int)
    registry.unregister("neck", "Scale")
    with pytest.raises(ComponentLookupError):
        registry.resolve("neck", "Scale")


def test_hook_plugin_registers_components(site, registry):
    write_dist(site, "fake-hooks", version="2.0", entry_points={"pretrain.plugins": {"hooks": "fakeplug_hooks"}},
               modules={"fakeplug_hooks/__init__.py": HOOKS})
    load_plugins(registry)
    rec = registry.resolve("neck", "HookNeck")
    assert rec.distribution == "fake-hooks" and rec.source == "hook"


def test_broken_hook_plugin_is_isolated(site, registry):
    write_dist(site, "fake-badhooks", entry_points={"pretrain.plugins": {"hooks": "fakeplug_badhooks"}},
               modules={"fakeplug_badhooks/__init__.py": BROKEN_IMPORT})
    load_plugins(registry)
    assert any(f.record.distribution == "fake-badhooks" and "needs libfoo" in f.error for f in registry.failures())


def test_cli_listing_json_and_no_torch(site):
    install_good(site)
    write_dist(site, "fake-bad", entry_points={"pretrain.backbones": {"Gone": "fakeplug_gone.m:X"}})
    probe = (
        "import sys, json; from pretrain.cli._list import collect; rows = collect(None, False); "
        "print(json.dumps({'torch': 'torch' in sys.modules, 'pydantic': 'pydantic' in sys.modules, "
        "'plugin': 'fakeplug_good' in sys.modules, 'n': len(rows)}))"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    flags = json.loads(out.stdout)
    assert flags == {"torch": False, "pydantic": False, "plugin": False, "n": flags["n"]} and flags["n"] > 20
    res = run_cli("list-components", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    keys = {"kind", "name", "distribution", "version", "value", "status", "error"}
    assert all(keys <= set(r) for r in rows)
    gone = next(r for r in rows if r["name"] == "Gone")
    assert gone["status"] == "broken" and "fakeplug_gone" in gone["error"]
    tiny = next(r for r in rows if r["name"] == "TinyNet")
    assert tiny["status"] == "ok" and tiny["distribution"] == "fake-good"


def test_cli_details_and_plugins_report_broken(site):
    install_good(site)
    write_dist(site, "fake-bad", version="0.9", entry_points={"pretrain.necks": {"BadNeck": "fakeplug_bad.m:X"}},
               modules={"fakeplug_bad/__init__.py": "", "fakeplug_bad/m.py": BROKEN_IMPORT})
    res = run_cli("list-components", "--details", "--json", "--kind", "neck")
    assert res.returncode == 0, res.stderr
    bad = next(r for r in json.loads(res.stdout) if r["name"] == "BadNeck")
    assert bad["status"] == "broken" and "needs libfoo" in bad["error"]
    res = run_cli("plugins", "--json")
    assert res.returncode == 0, res.stderr
    dists = {d["distribution"]: d for d in json.loads(res.stdout)["distributions"]}
    assert dists["fake-bad"]["broken"][0]["error"].endswith("needs libfoo")
    human = run_cli("plugins")
    assert human.returncode == 0 and "fake-bad" in human.stdout and "needs libfoo" in human.stdout


def test_fresh_registry_object_is_independent():
    a, b = Registry(autoload=False), Registry(autoload=False)
    assert a.entries() == b.entries()
    assert all(r.distribution == "pretrain" for r in a.entries())
