"""The example plugin (``examples/acme-plugin``) installed as a user would, then used via the CLI.

It is pip-installed non-editable into a temporary target directory (from a copy,
so the build leaves nothing in the source tree) which is put on ``PYTHONPATH``
for the subprocesses; nothing is installed into the test environment itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import EXAMPLES, run_cli

pytestmark = pytest.mark.slow

PLUGIN = EXAMPLES / "acme-plugin"
COMPONENTS = {
    ("backbone", "AcmeResNetCIFAR"), ("neck", "GeMPooling"), ("head", "MLPClsHead"),
    ("loss", "AcmeFocalLoss"), ("model", "AcmeRotNet"),
}


def pip_install(source: Path, target: Path) -> None:
    """``pip install --no-deps --no-build-isolation --target TARGET SOURCE`` (no network)."""
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """The plugin installed into a fresh target dir; yields paths and the subprocess env."""
    root = tmp_path_factory.mktemp("acme")
    source = root / "acme-plugin"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "runs"))
    site = root / "site"
    pip_install(source, site)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    yield {"site": site, "source": source, "root": root, "env": env}


def test_installed_as_a_real_distribution(installed):
    site = installed["site"]
    assert (site / "pretrain_acme" / "heads.py").is_file()
    entry_points = next(site.glob("pretrain_acme-*.dist-info")) / "entry_points.txt"
    assert "MLPClsHead = pretrain_acme.heads:MLPClsHead" in entry_points.read_text()


def test_list_components_shows_every_component(installed):
    res = run_cli("list-components", "--json", "--details", env=installed["env"])
    assert res.returncode == 0, res.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(res.stdout) if r["distribution"] == "pretrain-acme"}
    assert set(rows) == COMPONENTS
    assert all(r["status"] == "ok" and r["version"] == "0.1.0" for r in rows.values()), rows


def test_describe(installed):
    res = run_cli("describe", "MLPClsHead", env=installed["env"])
    assert res.returncode == 0, res.stderr
    assert "pretrain-acme" in res.stdout and "hidden_channels" in res.stdout and "Width of the hidden" in res.stdout


@pytest.mark.parametrize("spec", ["acme.toml", "rotnet.toml"])
def test_validate(installed, spec):
    res = run_cli("validate", str(installed["source"] / spec), "--json", env=installed["env"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["ok"] is True


def test_validate_catches_a_wrong_width(installed):
    spec = str(installed["source"] / "acme.toml")
    res = run_cli("validate", spec, "--set", "model.head.in_channels=64", env=installed["env"])
    assert res.returncode == 1 and "model.head.in_channels" in res.stderr


def test_train_one_epoch(installed):
    run_dir = installed["root"] / "run"
    res = run_cli("train", str(installed["source"] / "acme.toml"), "--run-dir", str(run_dir), "--plain",
                  "--set", "train.epochs=1", "--set", "train.max_steps=3", "--set", "data.val_batch_size=512",
                  env=installed["env"], timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (run_dir / "checkpoints" / "best.safetensors").is_file()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics and "accuracy/top1" in json.dumps(metrics[-1])


def test_plugin_own_tests_pass(installed):
    env = {**os.environ, **installed["env"]}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=installed["source"], capture_output=True, text=True, env=env, check=False, timeout=600,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "failed" not in res.stdout


def test_pretrain_rotnet_one_epoch(installed):
    run_dir = installed["root"] / "run-rotnet"
    res = run_cli("train", str(installed["source"] / "rotnet.toml"), "--run-dir", str(run_dir), "--plain",
                  "--set", "train.epochs=1", "--set", "train.max_steps=2", env=installed["env"], timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (run_dir / "checkpoints" / "last.safetensors").is_file() or (run_dir / "checkpoints").is_dir()
