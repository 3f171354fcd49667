"""``pretrain new-plugin``: the newcomer path of ``docs/writing-plugins.md``, run command by command.

The doc's ``<!-- newcomer-path -->`` block is parsed and each command executed in
a temporary directory, so the documented path is the tested path: scaffold,
``pip install`` (non-editable, into a target dir on ``PYTHONPATH``), the package's
own pytest, ``list-components``, ``validate``, and a short ``train``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

DOC = ROOT / "docs" / "writing-plugins.md"


def newcomer_commands() -> list[list[str]]:
    """The commands of the doc's newcomer block, comments stripped."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- newcomer-path -->\n```bash\n(.*?)```", text, re.DOTALL)
    assert match, "docs/writing-plugins.md lost its <!-- newcomer-path --> block"
    return [shlex.split(line, comments=True) for line in match[1].splitlines() if line.strip()]


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def to_subprocess(cmd: list[str], site: Path) -> list[str]:
    """Map a documented command to what the test runs (same arguments, hermetic install, tiny train)."""
    tool, *args = cmd
    if tool == "pip":
        assert args[0] == "install"
        return [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                "--target", str(site), *args[1:]]
    if tool == "pytest":
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    assert tool == "pretrain", cmd
    extra = ["--set", "train.epochs=1", "--set", "train.max_steps=3", "--plain"] if args[0] == "train" else []
    return [sys.executable, "-m", "pretrain.cli", *args, *extra]


@pytest.mark.slow
def test_newcomer_path_from_scaffold_to_trained_model(tmp_path):
    commands = newcomer_commands()
    assert [c[:2] for c in commands] == [
        ["pretrain", "new-plugin"], ["pip", "install"], ["pytest", "pretrain-acme/tests"],
        ["pretrain", "list-components"], ["pretrain", "validate"], ["pretrain", "train"],
    ]
    site = tmp_path / "site"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    for cmd in commands:
        res = run(to_subprocess(cmd, site), tmp_path, env)
        assert res.returncode == 0, f"`{shlex.join(cmd)}` failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        if cmd[:2] == ["pretrain", "list-components"]:
            assert "AcmeHead" in res.stdout and "pretrain-acme" in res.stdout
    # a trained model with the plugin's own components
    run_dir = tmp_path / "runs" / "acme"
    assert (run_dir / "checkpoints" / "best.safetensors").is_file()
    spec = (run_dir / "spec.toml").read_text()
    assert 'type = "AcmeBackbone"' in spec and 'type = "AcmeLoss"' in spec


@pytest.mark.slow
@pytest.mark.parametrize("kinds", ["backbone", "loss", "model", "neck,head"])
def test_partial_scaffolds_install_and_pass_their_tests(tmp_path, kinds):
    site = tmp_path / "site"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    name = "solo-" + kinds.replace(",", "-")
    res = run([sys.executable, "-m", "pretrain.cli", "new-plugin", name, "--kinds", kinds, "--dir", "plug"],
              tmp_path, env)
    assert res.returncode == 0, res.stderr
    for cmd in (["pip", "install", "./plug"], ["pytest", "plug/tests"]):
        res = run(to_subprocess(cmd, site), tmp_path, env)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    specs = sorted(p.name for p in (tmp_path / "plug").glob("*.toml") if p.name != "pyproject.toml")
    assert len(specs) == (2 if "model" in kinds else 1)
    for spec in specs:
        res = run([sys.executable, "-m", "pretrain.cli", "validate", f"plug/{spec}", "--json"], tmp_path, env)
        assert res.returncode == 0 and json.loads(res.stdout)["ok"], res.stdout + res.stderr


def test_plan_names_and_files():
    from pretrain.cli._new_plugin import plan_plugin

    plan = plan_plugin("my-models", ["loss", "backbone"])
    assert (plan.dist, plan.package, plan.prefix, plan.kinds) == (
        "pretrain-my-models", "pretrain_my_models", "MyModels", ("backbone", "loss"))
    assert set(plan.files) == {
        "pyproject.toml", "README.md", ".gitignore", "my_models.toml", "tests/test_pretrain_my_models.py",
        "src/pretrain_my_models/__init__.py", "src/pretrain_my_models/backbones.py",
        "src/pretrain_my_models/losses.py",
    }
    pyproject = plan.files["pyproject.toml"]
    assert '[project.entry-points."pretrain.losses"]\nMyModelsLoss = "pretrain_my_models.losses:MyModelsLoss"' in pyproject
    spec = plan.files["my_models.toml"]
    assert 'type = "MyModelsBackbone"' in spec and 'type = "LinearClsHead"' in spec and 'type = "MyModelsLoss"' in spec
    compile(plan.files["src/pretrain_my_models/backbones.py"], "backbones.py", "exec")


@pytest.mark.parametrize(("name", "kinds", "needle"), [
    ("Acme Models", ["head"], "invalid plugin name"),
    ("acme", ["optimizer"], "unknown kind(s) optimizer"),
    ("acme", [], "unknown kind(s) (none given)"),
])
def test_plan_rejects_bad_input(name, kinds, needle):
    from pretrain import PretrainError
    from pretrain.cli._new_plugin import plan_plugin

    with pytest.raises(PretrainError, match=re.escape(needle)):
        plan_plugin(name, kinds)


def test_refuses_to_overwrite(tmp_path):
    from pretrain import PretrainError
    from pretrain.cli._new_plugin import plan_plugin, write_plugin

    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(PretrainError, match="--force"):
        write_plugin(plan_plugin("acme"), tmp_path)
    written = write_plugin(plan_plugin("acme"), tmp_path, force=True)
    assert (tmp_path / "keep.txt").read_text() == "mine" and len(written) == 12
