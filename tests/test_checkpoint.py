"""Checkpoint files: safetensors round trips, atomic replacement, corruption, RNG/optimizer state."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.engine import checkpoint as ckpt
from pretrain.engine.checkpoint import CheckpointError


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(4, 3, generator=g),
        "bf": torch.randn(5, generator=g).to(torch.bfloat16),
        "step": torch.tensor(7.0),
        "u8": torch.randint(0, 255, (6,), generator=g, dtype=torch.uint8),
        "i64": torch.arange(3),
    }


def test_round_trip_keeps_bits_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    t = _tensors(0)
    ckpt.save_tensors(path, t, {"epoch": "3"})
    back, meta = ckpt.load_tensors(path)
    assert meta == {"epoch": "3"}
    assert set(back) == set(t)
    for k in t:
        assert back[k].dtype == t[k].dtype and torch.equal(back[k], t[k]), k
    # Any safetensors reader can open it (plain format, no pickle).
    from safetensors.torch import load_file

    assert torch.equal(load_file(path)["w"], t["w"])
    assert ckpt.read_metadata(path)["epoch"] == "3"


def test_shared_storage_is_saved(tmp_path: Path) -> None:
    w = torch.randn(3, 3)
    ckpt.save_tensors(tmp_path / "s.safetensors", {"a": w, "b": w}, {})
    back, _ = ckpt.load_tensors(tmp_path / "s.safetensors")
    assert torch.equal(back["a"], back["b"])


def test_failed_write_leaves_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.safetensors"
    ckpt.save_tensors(path, _tensors(0), {"v": "old"})
    monkeypatch.setattr(ckpt, "_CHUNK", 16)  # many writes, so the failure lands mid-file
    calls = {"n": 0}
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        calls["n"] += 1
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(ckpt.WriteError, match="disk full") as info:
        ckpt.save_tensors(path, _tensors(1), {"v": "new"})
    assert str(path) in info.value.message  # the file is named
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert calls["n"] == 1
    back, meta = ckpt.load_tensors(path)
    assert meta["v"] == "old" and torch.equal(back["w"], _tensors(0)["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]  # temp file removed


def test_sigkill_mid_write_leaves_previous_file(tmp_path: Path) -> None:
    """A process killed while writing (data on disk, not yet renamed) cannot tear the file."""
    path = tmp_path / "last.safetensors"
    ckpt.save_tensors(path, _tensors(0), {"v": "old"})
    script = textwrap.dedent(
        f"""
        import builtins, time, torch
        from pretrain.engine import checkpoint as ckpt
        ckpt._CHUNK = 1 << 16
        orig_open = builtins.open
        def slow_open(*a, **k):
            # Stall after the first chunk of the temp file: it exists, half written.
            fh = orig_open(*a, **k)
            if "tmp-" in str(a[0]):
                write = fh.write
                def slow_write(b):
                    n = write(b); fh.flush(); time.sleep(60); return n
                fh.write = slow_write
            return fh
        builtins.open = slow_open
        ckpt.save_tensors({str(path)!r}, {{"w": torch.zeros(200_000)}}, {{"v": "new"}})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".last.safetensors.tmp-*")):
            assert proc.poll() is None, "writer exited early"
            assert time.monotonic() < deadline, "writer never started"
            time.sleep(0.02)
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    leftovers = list(tmp_path.glob(".last.safetensors.tmp-*"))
    assert leftovers and leftovers[0].stat().st_size > 0
    back, meta = ckpt.load_tensors(path)
    assert meta["v"] == "old" and torch.equal(back["w"], _tensors(0)["w"])
    ckpt.remove_stale_temp_files(tmp_path)
    assert not list(tmp_path.glob(".*tmp-*"))


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "last.state.safetensors"
    ckpt.save_tensors(path, _tensors(0), {})
    data = path.read_bytes()
    for cut in (3, 40, len(data) - 5):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            ckpt.load_tensors(path)


def test_flipped_byte_fails_the_checksum(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    ckpt.save_tensors(path, _tensors(0), {})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch") as info:
        ckpt.load_tensors(path)
    assert "best.safetensors" in str(info.value)  # the hint says what to do


def test_not_a_checkpoint(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        ckpt.load_tensors(junk)
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ckpt.load_tensors(junk)
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.load_tensors(tmp_path / "missing.safetensors")
    ckpt.save_tensors(tmp_path / "plain.safetensors", {"a": torch.ones(1)}, {})
    with pytest.raises(CheckpointError, match="not a pretrain training state"):
        ckpt.read_metadata_json(tmp_path / "plain.safetensors")


def test_rng_round_trip() -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    state = ckpt.capture_rng()
    expected = (torch.rand(3), np.random.standard_normal(2), random.random(), random.gauss(0, 1))
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    ckpt.restore_rng(state)
    got = (torch.rand(3), np.random.standard_normal(2), random.random(), random.gauss(0, 1))
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


@pytest.mark.parametrize("name", ["SGD", "AdamW", "RMSprop"])
def test_optimizer_state_round_trip_is_bitwise(tmp_path: Path, name: str) -> None:
    def make() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        kwargs = {"momentum": 0.9} if name != "AdamW" else {"betas": (0.8, 0.99)}
        return model, getattr(torch.optim, name)(model.parameters(), lr=0.1, **kwargs)

    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))

    def step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    ref_model, ref_opt = make()
    for _ in range(5):
        step(ref_model, ref_opt)
    model, opt = make()
    for _ in range(2):
        step(model, opt)
    tensors, doc = ckpt.flatten_optimizer(opt.state_dict())
    ckpt.save_tensors(tmp_path / "s.safetensors", tensors, {"doc": ckpt.dumps(doc)})
    back, meta = ckpt.load_tensors(tmp_path / "s.safetensors")
    import json

    model2, opt2 = make()
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(ckpt.unflatten_optimizer(back, json.loads(meta["doc"]), opt2.state_dict()))
    if name == "AdamW":
        assert isinstance(opt2.param_groups[0]["betas"], tuple)
    for _ in range(3):
        step(model2, opt2)
    for a, b in zip(ref_model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
