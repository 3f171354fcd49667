"""Plugin authors, round two: the kit checks what validate does, errors blame the right party.

The conformance kit builds on the meta device like ``validate``; its side-effect check
ignores in-process registrations; its failures show values. A third-party component
that raises while training is named with its distribution; only pretrain's own bugs
ask for a report. ``--strict-plugins`` fails every command when a plugin is broken.
``describe`` shows constraints and cross-field checks; ``new-plugin`` takes
``--dist``/``--package``.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, ClassVar

import pytest
import torch
from pydantic import Field
from torch import nn

import _conformance_fakes as fakes
from _fake_components import BROKEN_IMPORT, GOOD
from _preflight_fakes import SSL, SSL_EPS, ssl_spec
from conftest import run_cli, write_dist
from pretrain import PluginError, PretrainError
from pretrain.components import BaseBackbone
from pretrain.testing import ComponentCheckError, check_component, component_checks


def failing(cls: type, check: str, **kwargs: Any) -> ComponentCheckError:
    case = next(c for c in component_checks(cls, **kwargs) if c.name == check)
    with pytest.raises(ComponentCheckError) as err:
        case()
    return err.value


class LinspaceNet(BaseBackbone):
    """Reads drop-path rates back from a tensor in ``__init__`` (works on the CPU only).

    Args:
        depth: Blocks.
        drop_path_rate: Largest rate.
    """

    example_config: ClassVar[dict[str, Any]] = {"depth": 2}

    def __init__(self, *, depth: Annotated[int, Field(gt=0)] = 2, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        self.rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.conv(x),)


# ------------------------------------------------------------------------------ the kit


def test_meta_unsafe_backbone_fails_the_kit_naming_the_meta_device(registry):
    check_component(LinspaceNet, expected_failed_checks={"check_meta_build": "the case under test"})
    err = failing(LinspaceNet, "check_meta_build")
    assert "meta device" in err.problem and "Cannot copy out of meta tensor" in err.problem
    assert ".tolist()" in err.fix and "__init__" in err.fix


def test_side_effect_check_ignores_in_process_registrations(site, registry):
    (site / "fakeplug_nb.py").write_text(
        "from pretrain.components import BaseNeck\n\n"
        "class Ident(BaseNeck):\n    '''Identity.'''\n\n"
        "    def forward(self, inputs):\n        return inputs\n",
        encoding="utf-8",
    )
    import fakeplug_nb

    registry.register("neck", "Ident", fakeplug_nb.Ident)  # the README's notebook route
    assert "check_import_side_effects" in check_component("Ident")
    assert "check_import_side_effects" in check_component(fakeplug_nb.Ident, kind="neck")


def test_kit_failures_show_the_values_that_differ(registry):
    err = failing(fakes.IgnoresWeightL1, "check_loss_weight")
    assert re.search(r"\d+ of \d+ elements differ; first: \[0(, \d+)?\] \S+ vs 0\b", err.problem), err.problem
    err = failing(fakes.NoisyEvalNet, "check_deterministic_eval")
    assert "elements differ; first: [0, " in err.problem and " vs " in err.problem


# ------------------------------------------------------------------------------ blame


@pytest.fixture
def ssl(site):
    write_dist(site, "fake-ssl", version="0.3.1", entry_points=SSL_EPS,
               modules={"fakeplug_ssl/__init__.py": "", "fakeplug_ssl/algo.py": SSL})
    return site


def fragile_spec() -> dict[str, Any]:
    spec = ssl_spec()
    spec["model"] = {"type": "ImageClassifier", "in_channels": 1, "mean": [127.5], "std": [127.5],
                     "backbone": {"type": "Fragile"}, "neck": {"type": "GlobalAveragePooling"},
                     "head": {"type": "LinearClsHead", "num_classes": 10, "in_channels": 4}}
    for split in ("train", "val"):
        spec["data"][split]["pipeline"] = []
    return spec


def test_third_party_component_raising_while_training_is_attributed_to_its_distribution(ssl, tmp_path):
    import pretrain

    with pytest.raises(PluginError) as err:
        pretrain.train(fragile_spec(), run_dir=tmp_path / "run")
    text = str(err.value)
    assert text.startswith("model.backbone: component Fragile (from distribution fake-ssl, "
                           "version 0.3.1) raised ValueError: fragile: lost track of its running state while training")
    assert "please report" not in text and "fake-ssl" in (err.value.hint or "")
    assert isinstance(err.value.__cause__, ValueError)  # --debug shows the component's frames


@pytest.mark.slow  # a CLI training process
def test_cli_train_exits_1_naming_the_plugin(ssl, tmp_path):
    path = tmp_path / "fragile.json"
    path.write_text(json.dumps(fragile_spec()), encoding="utf-8")
    res = run_cli("train", str(path), "--run-dir", str(tmp_path / "run"), "--plain")
    flat = " ".join(res.stderr.split())
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "model.backbone: component Fragile (from distribution fake-ssl, version 0.3.1) raised ValueError" in flat
    assert "please report" not in flat


def _raise_in(module_name: str) -> BaseException:
    """An exception whose innermost frame runs in ``module_name`` (as if that module's code raised)."""
    code = compile("def boom():\n    raise RuntimeError('boom')\n", f"<{module_name}>", "exec")
    namespace: dict[str, Any] = {"__name__": module_name}
    exec(code, namespace)  # a frame whose module is module_name
    try:
        namespace["boom"]()
    except RuntimeError as exc:
        return exc
    raise AssertionError("unreachable")


def test_only_pretrains_own_code_asks_for_a_report(ssl):
    from pretrain.assembly.blame import unexpected_error
    from pretrain.registry.registry import get_registry

    get_registry().entries()  # the registry knows fake-ssl's modules
    own = unexpected_error(_raise_in("pretrain_builtins.necks.gap"), "`pretrain train`")
    assert "please report it" in (own.hint or "") and not isinstance(own, PluginError)
    theirs = unexpected_error(_raise_in("fakeplug_ssl.helpers"), "`pretrain train`")
    assert isinstance(theirs, PluginError)
    assert "code in fakeplug_ssl.helpers (from distribution fake-ssl, version 0.3.1)" in theirs.message
    assert "please report" not in str(theirs)
    library = unexpected_error(_raise_in("numpy.core"), "`pretrain train`")
    assert "please report" not in str(library)


# ------------------------------------------------------------------------------ strict plugins


def install_broken(site):
    write_dist(site, "fake-good", entry_points={"pretrain.backbones": {"TinyNet": "fakeplug_good.comps:TinyNet"}},
               modules={"fakeplug_good/__init__.py": "", "fakeplug_good/comps.py": GOOD})
    write_dist(site, "fake-broken", version="0.2", entry_points={"pretrain.backbones": {"Bad": "fakeplug_bad.m:X"}},
               modules={"fakeplug_bad/__init__.py": "", "fakeplug_bad/m.py": BROKEN_IMPORT})


def test_strict_mode_fails_every_command_with_a_broken_plugin(site, monkeypatch, capsys):
    from pretrain.cli import main

    install_broken(site)
    monkeypatch.setenv("PRETRAIN_STRICT_PLUGINS", "0")  # --strict-plugins sets it; restored afterwards
    for args in (["--strict-plugins", "list-components", "--details"], ["--strict-plugins", "plugins"],
                 ["--strict-plugins", "describe", "TinyNet"]):
        assert main(args) == 1, args
        err = " ".join(capsys.readouterr().err.split())
        assert "fake-broken 0.2" in err and "needs libfoo" in err and "strict mode" in err
    monkeypatch.setenv("PRETRAIN_STRICT_PLUGINS", "0")
    assert main(["list-components", "--details"]) == 0  # not strict: reported, exit 0
    assert "broken" in capsys.readouterr().out


@pytest.mark.slow  # a CLI process that imports every installed component
def test_strict_mode_from_the_environment(site):
    install_broken(site)
    res = run_cli("list-components", env={"PRETRAIN_STRICT_PLUGINS": "1"})
    assert res.returncode == 1 and "fake-broken" in res.stderr and "Traceback" not in res.stderr


# ------------------------------------------------------------------------------ describe, new-plugin


def test_describe_shows_constraints_checks_and_init_only_with_weights(capsys):
    from pretrain.cli import main

    assert main(["describe", "MoCo"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "> 0" in out and ">= 0, <= 1" in out  # queue_len, momentum
    assert "checks data_issues" in out and "queue_len" in out and "init" in out
    assert main(["describe", "MultiView"]) == 0
    out = capsys.readouterr().out
    assert "checks spec_issues" in out and "View counts match the pipelines" in " ".join(out.split())
    assert not re.search(r"^│ init ", out, re.MULTILINE)
    assert main(["describe", "MultiView", "--json"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "init" not in schema["properties"] and schema["x-cross-field-checks"]
    assert main(["describe", "Digits"]) == 0
    assert not re.search(r"^│ init ", capsys.readouterr().out, re.MULTILINE)


def test_new_plugin_takes_distribution_and_package_names(tmp_path, capsys):
    from pretrain.cli import main
    from pretrain.cli._new_plugin import plan_plugin

    plan = plan_plugin("orchid", ["backbone"], dist="orchid-vision", package="orchid_vision")
    assert (plan.dist, plan.package, plan.prefix) == ("orchid-vision", "orchid_vision", "Orchid")
    assert 'name = "orchid-vision"' in plan.files["pyproject.toml"]
    assert 'OrchidBackbone = "orchid_vision.backbones:OrchidBackbone"' in plan.files["pyproject.toml"]
    assert "src/orchid_vision/backbones.py" in plan.files and "tests/test_orchid_vision.py" in plan.files
    assert plan_plugin("orchid", ["loss"], dist="Orchid.Vision").package == "orchid_vision"
    assert main(["new-plugin", "orchid", "--kinds", "loss", "--dist", "orchid-vision", "--dir", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "src" / "orchid_vision" / "losses.py").is_file()
    for bad, needle in (({"dist": "-x"}, "invalid --dist"), ({"package": "orchid-vision"}, "Python identifier"),
                        ({"package": "json"}, "would shadow"), ({"package": "torch"}, "would shadow")):
        with pytest.raises(PretrainError, match=needle):
            plan_plugin("orchid", ["loss"], **bad)


def test_a_dataloader_workers_text_traceback_is_attributed(ssl):
    import fakeplug_ssl.algo as algo

    from pretrain.assembly.blame import unexpected_error

    # What torch's DataLoader raises in the main process for an exception in a worker.
    text = ("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
            '  File "/site-packages/torch/utils/data/_utils/worker.py", line 349, in _worker_loop\n'
            f'  File "{algo.__file__}", line 90, in forward\nValueError: bad crop')
    try:
        raise ValueError(text)
    except ValueError as exc:
        error = unexpected_error(exc, "`pretrain train`")
    assert isinstance(error, PluginError) and "code in fakeplug_ssl.algo (from distribution fake-ssl" in error.message
