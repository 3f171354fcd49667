"""The channels-last guard against oneDNN's strided 1x1 NHWC backward defect (oneDNN #6035).

The defect shows on CPUs whose oneDNN ISA is AVX2 (the AMD EPYC CI machines): with one
thread the process aborts, with two the weight gradients differ run to run. The tests
cap oneDNN at AVX2 (``ONEDNN_MAX_CPU_ISA``) in a subprocess, so they reproduce it on
AVX-512 machines too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from pretrain.engine.memory_format import ONEDNN_SAFE_CHANNELS, needs_contiguous_guard, to_channels_last

_TRAIN = textwrap.dedent(
    """
    import hashlib, sys, tempfile
    import torch
    sys.path.insert(0, {tests!r})
    from _engine_specs import tiny_spec
    from pretrain import validate_spec
    from pretrain.engine.trainer import Trainer

    torch.set_num_threads(int(sys.argv[1]))
    spec = validate_spec(tiny_spec(channels_last=True, max_steps=12, cpu_threads=int(sys.argv[1])))
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(spec, run_dir, live=False)
        trainer.fit()
        digest = hashlib.sha256()
        for key, value in sorted(trainer.model.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().contiguous().numpy().tobytes())
        print("DIGEST", digest.hexdigest())
    """
)


def _train_digest(threads: int) -> str:
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        [sys.executable, "-c", _TRAIN.format(tests=tests), str(threads)],
        check=False, capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, f"training crashed (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("DIGEST ")]
    assert lines, proc.stdout + proc.stderr
    return lines[-1].split()[1]


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_narrow_resnet_channels_last_is_deterministic_on_avx2(threads: int) -> None:
    # Before the guard: 1 thread aborts ("corrupted size vs. prev_size"), 2 threads
    # give different weights on every run.
    assert _train_digest(threads) == _train_digest(threads)


def test_guard_selects_only_narrow_strided_pointwise_convs() -> None:
    assert needs_contiguous_guard(nn.Conv2d(4, 16, 1, stride=2))
    assert needs_contiguous_guard(nn.Conv2d(ONEDNN_SAFE_CHANNELS - 1, 8, 1, stride=(1, 2)))
    assert not needs_contiguous_guard(nn.Conv2d(ONEDNN_SAFE_CHANNELS, 8, 1, stride=2))
    assert not needs_contiguous_guard(nn.Conv2d(4, 16, 1, stride=1))
    assert not needs_contiguous_guard(nn.Conv2d(4, 16, 3, stride=2))
    # Depthwise: one input channel per group.
    assert needs_contiguous_guard(nn.Conv2d(64, 64, 1, stride=2, groups=64))
    assert not needs_contiguous_guard(nn.Linear(4, 4))


def test_to_channels_last_keeps_guarded_convs_contiguous_and_outputs_equal() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 32, 1, stride=2),
                          nn.Conv2d(32, 32, 1, stride=2))
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    guarded = to_channels_last(model, torch.device("cpu"))
    assert guarded == ["1"]
    assert model[1].weight.stride() == (8, 1, 1, 1)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model[2].weight.is_contiguous(memory_format=torch.channels_last)
    out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected)
    # Off the CPU nothing is guarded (checked without a GPU: the device type decides).
    other = nn.Sequential(nn.Conv2d(3, 8, 1, stride=2))
    assert to_channels_last(other, torch.device("meta")) == []
