"""Shared fixtures: hermetic registries and fake installed distributions."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import torch

from pretrain.registry.plugins import reset_plugin_manager
from pretrain.registry.registry import Registry, set_registry
from pretrain.registry.schema import check_component_contract

# Tiny CPU shapes run faster single-threaded, and the suite must not oversubscribe
# a 2-core machine (tests that time or distribute things start their own processes).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SPECS = EXAMPLES / "specs"


@pytest.fixture
def registry() -> Iterator[Registry]:
    """A fresh process-wide registry, restored afterwards (hermetic plugin tests)."""
    fresh = Registry(validator=check_component_contract)
    previous = set_registry(fresh)
    reset_plugin_manager()
    try:
        yield fresh
    finally:
        set_registry(previous)
        reset_plugin_manager()


def write_dist(
    root: Path,
    name: str,
    *,
    version: str = "1.0",
    entry_points: Mapping[str, Mapping[str, str]] | None = None,
    modules: Mapping[str, str] | None = None,
) -> Path:
    """Create an 'installed' distribution (dist-info + modules) under ``root``.

    This is exactly what pip leaves in site-packages, so ``importlib.metadata``
    discovers it once ``root`` is on ``sys.path``.
    """
    root.mkdir(parents=True, exist_ok=True)
    for rel, source in (modules or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    lines: list[str] = []
    for group, eps in (entry_points or {}).items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in eps.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")
    return root


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: Registry) -> Path:
    """A temporary site directory on sys.path (and PYTHONPATH for subprocesses)."""
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")]))
    yield path
    for mod in [m for m in sys.modules if m.startswith("fakeplug")]:
        del sys.modules[mod]


def run_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``pretrain ARGS`` in a subprocess (the real console entry point)."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pretrain.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )
