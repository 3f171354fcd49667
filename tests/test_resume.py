"""A run killed with SIGKILL and resumed ends bitwise identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from _engine_specs import digits_data, tiny_spec, write_spec
from pretrain.engine import checkpoint as ckpt

pytestmark = pytest.mark.slow

# One intra-op thread: the two runs must do the same float operations, and a busy
# 2-core machine makes multi-threaded tiny models crawl.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def _cmd(spec: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pretrain.cli", "train", str(spec), "--run-dir", str(run_dir),
            "--plain", *extra]


def _train(spec: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(_cmd(spec, run_dir, *extra), capture_output=True, text=True, env=ENV,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _kill_when(spec: Path, run_dir: Path, ready: Any) -> dict[str, Any]:
    """Start a run, SIGKILL it once ``ready(last.json)`` holds; return that last.json."""
    proc = subprocess.Popen(_cmd(spec, run_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    info: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                info = json.loads((run_dir / "checkpoints" / "last.json").read_text())
            except (OSError, ValueError):
                info = {}
            if info and ready(info):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"run was not killed: {proc.returncode}"
    return info


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_tensors(path)[0]


def _assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differ: {different[:5]}"


def _strip_times(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "images_per_s")}
            for r in records]


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.toml", tiny_spec(
        epochs=2, grad_accum=2, checkpoint_every_steps=3, grad_clip=5.0,
        optimizer={"type": "AdamW", "lr": 3e-3},
        schedule={"type": "cosine", "warmup_epochs": 0.5},
        ema={"decay": 0.9, "evaluate": False},
        data=digits_data(batch_size=16),
    ))
    ref, run = tmp_path / "ref", tmp_path / "run"
    _train(spec, ref)

    # Killed in the second epoch, some steps after a step-level checkpoint.
    info = _kill_when(spec, run, lambda i: i["epoch"] == 1 and i["step_in_epoch"] > 0)
    assert 0 < info["step_in_epoch"] < 45
    # A fresh start over the killed run's checkpoints is refused; nothing is touched.
    before = (run / "checkpoints" / "last.state.safetensors").read_bytes()
    refused = subprocess.run(_cmd(spec, run), capture_output=True, text=True, env=ENV,
                             timeout=120, check=False)
    assert refused.returncode == 1 and "--resume" in refused.stderr
    assert (run / "checkpoints" / "last.state.safetensors").read_bytes() == before

    resumed = _train(spec, run, "--resume")
    assert "resuming" in resumed.stderr
    for name in ("last.safetensors", "last.state.safetensors", "best.safetensors"):
        a, b = _tensors(ref / "checkpoints" / name), _tensors(run / "checkpoints" / name)
        if name == "last.state.safetensors":  # RNG states and optimizer moments too
            a = {k: v for k, v in a.items()}
        _assert_bitwise(a, b)
    ref_metrics = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    run_metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert _strip_times(ref_metrics) == _strip_times(run_metrics)
    assert [r["epoch"] for r in run_metrics] == [1, 2]


def test_sigkill_at_epoch_boundary_then_resume(tmp_path: Path) -> None:
    """Killed right after an epoch's checkpoint (no step checkpoints): the next epoch replays."""
    spec = write_spec(tmp_path / "spec.toml", tiny_spec(
        epochs=3, data=digits_data(batch_size=64), optimizer={"type": "SGD", "lr": 0.05,
                                                             "momentum": 0.9}))
    ref, run = tmp_path / "ref", tmp_path / "run"
    _train(spec, ref)
    _kill_when(spec, run, lambda i: i["epoch"] >= 1)
    _train(spec, run, "--resume")
    _assert_bitwise(_tensors(ref / "checkpoints" / "last.state.safetensors"),
                    _tensors(run / "checkpoints" / "last.state.safetensors"))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
