"""Every contrastive/siamese algorithm: 2 gloo processes equal 1 process on the same global batch.

Losses, the gradients of the first step, and after 3 steps (momentum teachers updated by
``after_optimizer_step``) the weights, teachers and MoCo's queue.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dist_selfsup import ALGOS, STEPS

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")]

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("selfsup_ddp")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for cmd in ([*torchrun, str(HERE / "dist_selfsup.py"), str(out / "ddp")],
                [sys.executable, str(HERE / "dist_selfsup.py"), str(out / "one")]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=400, check=False)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _close(a: torch.Tensor, b: torch.Tensor, what: str, rel: float = 2e-5) -> None:
    """Equal up to float32 summation order: relative to the tensor's largest value."""
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    diff = float((a - b).abs().max()) if b.numel() else 0.0
    assert diff <= rel * scale, f"{what}: max diff {diff:.3g} (largest value {scale:.3g})"


@pytest.mark.parametrize("name", list(ALGOS))
def test_two_processes_equal_one(runs: Path, name: str) -> None:
    r0 = load_file(str(runs / "ddp" / f"{name}.rank0.safetensors"))
    r1 = load_file(str(runs / "ddp" / f"{name}.rank1.safetensors"))
    one = load_file(str(runs / "one" / f"{name}.rank0.safetensors"))
    assert r0.keys() == one.keys() == r1.keys()
    for step in range(1, STEPS + 1):
        _close(r0[f"loss.{step}"], one[f"loss.{step}"], f"loss of step {step}")
    grads = [k for k in one if k.startswith("grad.")]
    assert len(grads) > 10
    for key in grads:  # DDP's averaged gradients are the single-process ones (no 1/world factor)
        _close(r0[key], one[key], key)
    states = [k for k in one if k.startswith("state.")]
    for key in states:
        assert torch.equal(r0[key], r1[key]) or "running" in key or "num_batches" in key, f"ranks differ: {key}"
        _close(r0[key], one[key], key, rel=1e-4)  # 3 steps of SGD with momentum
    if name in ("MoCo", "MoCoV3", "BYOL"):
        teacher = [k for k in states if k.startswith(("state.momentum_encoder.module.", "state.target_net.module."))]
        assert teacher, "the momentum teacher is in the state dict"
    if name == "MoCo":
        assert float(one["state.queue.queue_ptr"]) == (STEPS * 8) % 16  # gathered keys enqueued
