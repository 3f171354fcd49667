"""FSDP2 (``train.strategy = "fsdp"``) on 2 CPU processes (gloo) against one process; sharded checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _engine_specs import TINY_VIT, digits_data, tiny_spec, write_spec
from conftest import run_cli
from pretrain.engine import checkpoint as ckpt
from pretrain.engine.sharded import load_weights_file

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")]

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _spec(tmp: Path, name: str, batch_size: int, **train: object) -> Path:
    data = digits_data(batch_size=batch_size, augment=False)
    data["drop_last"] = True  # 2 x 16 per step == 1 x 32
    return write_spec(tmp / name, tiny_spec(
        TINY_VIT, data=data, epochs=1, max_steps=5,
        optimizer={"type": "SGD", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
        grad_clip=10.0, **train,
    ))


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TORCHRUN, "-m", "pretrain.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=300, check=False)


def test_fsdp_two_processes_equal_one_process_and_eval_reads_the_shards(tmp_path: Path) -> None:
    fsdp = _torchrun("train", str(_spec(tmp_path, "fsdp.toml", 16, strategy="fsdp")), "--run-dir",
                     str(tmp_path / "fsdp"), "--plain")
    assert fsdp.returncode == 0, fsdp.stderr[-4000:]
    one = run_cli("train", str(_spec(tmp_path, "one.toml", 32)), "--run-dir", str(tmp_path / "one"), "--plain",
                  env=ENV, timeout=300)
    assert one.returncode == 0, one.stderr[-4000:]

    ckpts = tmp_path / "fsdp" / "checkpoints"
    names = sorted(p.name for p in ckpts.iterdir())
    assert "last.index.json" in names and "last.state.index.json" in names
    assert "last-00000-of-00002.safetensors" in names and "last-00001-of-00002.safetensors" in names
    assert "last.safetensors" not in names  # no rank gathered the whole model
    # Each shard holds about half of every sharded parameter.
    half, _ = ckpt.load_tensors(ckpts / "last-00001-of-00002.safetensors")
    ref, _ = ckpt.load_tensors(tmp_path / "one" / "checkpoints" / "last.safetensors")
    qkv = next(k for k in ref if k.endswith("qkv.weight"))
    assert half[qkv].shape[0] == ref[qkv].shape[0] // 2

    whole, meta = load_weights_file(ckpts / "last.index.json")
    assert whole.keys() == ref.keys() and meta["step"] == "5"
    for key in ref:
        torch.testing.assert_close(whole[key], ref[key], rtol=2e-4, atol=2e-5, msg=key)
    rec_fsdp = json.loads((tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()[-1])
    rec_one = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec_fsdp["train_loss"] == pytest.approx(rec_one["train_loss"], rel=1e-4)

    # `pretrain eval` in ONE process reads the sharded checkpoint (the run directory) and
    # reproduces the accuracy the FSDP run logged.
    ev = run_cli("eval", str(tmp_path / "fsdp.toml"), "--weights", str(tmp_path / "fsdp"), "--json",
                 "--device", "cpu", env=ENV)
    assert ev.returncode == 0, ev.stderr[-3000:]
    scores = json.loads(ev.stdout)
    assert scores["weights"].endswith("index.json")
    assert scores["accuracy/top1"] == pytest.approx(rec_fsdp["accuracy/top1"], abs=1e-6)

    # A new model starts from the shards with a Pretrained init rule (whole tensors merged).
    from pretrain.assembly.assemble import build_node
    from pretrain.spec.validate import validate_spec

    model = dict(TINY_VIT, init=[{"type": "Pretrained", "checkpoint": str(ckpts / "last.index.json")}])
    net = build_node(validate_spec({"model": model}).model)
    for key, value in net.state_dict().items():
        assert torch.equal(value, whole[key]), key

    # The sharded state resumes in a single process (whole tensors rebuilt from the shards).
    more = run_cli("train", str(tmp_path / "one.toml"), "--run-dir", str(tmp_path / "fsdp"), "--resume",
                   "--plain", "--set", "train.max_steps=7", "--set", "train.epochs=2", env=ENV, timeout=300)
    assert more.returncode == 0, more.stderr[-3000:]
    assert json.loads((ckpts / "last.json").read_text())["step"] == 7


def test_fsdp_bf16_mixed_precision_trains_and_fp16_is_refused(tmp_path: Path) -> None:
    bf16 = _torchrun("train", str(_spec(tmp_path, "bf16.toml", 16, strategy="fsdp", precision="bf16")),
                     "--run-dir", str(tmp_path / "bf16"), "--plain")
    assert bf16.returncode == 0, bf16.stderr[-4000:]
    record = json.loads((tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 5 and 0 < record["train_loss"] < 10
    assert "weights: " in bf16.stdout and "best.index.json" in bf16.stdout
    whole, _ = load_weights_file(tmp_path / "bf16" / "checkpoints" / "last.index.json")
    assert all(v.dtype == torch.float32 for k, v in whole.items() if v.is_floating_point())  # fp32 master weights

    fp16 = _torchrun("train", str(_spec(tmp_path, "fp16.toml", 16, strategy="fsdp", precision="fp16")),
                     "--run-dir", str(tmp_path / "fp16"), "--plain")
    # Each rank prints the one-paragraph error (torchrun then reports its failed children).
    assert fp16.returncode != 0 and 'error: train.strategy = "fsdp" trains in fp32 or bf16' in fp16.stderr
