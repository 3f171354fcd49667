"""SIGKILL mid-epoch and ``--resume``: weights, momentum teacher and MoCo queue bitwise identical."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from _engine_specs import write_spec
from test_resume import _assert_bitwise, _kill_when, _tensors, _train

pytestmark = pytest.mark.slow

VIT: dict[str, Any] = {"type": "VisionTransformer", "img_size": 8, "patch_size": 4, "in_channels": 1,
                       "arch": {"embed_dims": 16, "num_layers": 1, "num_heads": 2, "feedforward_channels": 32}}
MODELS: dict[str, dict[str, Any]] = {
    "MoCo": {"type": "MoCo", "queue_len": 96, "feat_dim": 8, "momentum": 0.1, "backbone": VIT,
             "neck": {"type": "MoCoV2Neck", "in_channels": 16, "hid_channels": 16, "out_channels": 8,
                      "with_avg_pool": False},
             "head": {"type": "ContrastiveHead", "temperature": 0.2}},
    "BYOL": {"type": "BYOL", "base_momentum": 0.1, "backbone": VIT,
             "neck": {"type": "NonLinearNeck", "in_channels": 16, "hid_channels": 16, "out_channels": 8,
                      "with_avg_pool": False, "with_bias": True, "with_last_bn": False},
             "head": {"type": "LatentPredictHead",
                      "predictor": {"type": "NonLinearNeck", "in_channels": 8, "hid_channels": 16, "out_channels": 8,
                                    "with_avg_pool": False, "with_bias": True, "with_last_bn": False}}},
}


def _spec(model: dict[str, Any]) -> dict[str, Any]:
    views = [{"type": "MultiView", "num_views": 2, "pipeline": [{"type": "RandomCrop", "size": 8, "padding": 1}]}]
    return {
        "model": {**model, "mean": [127.5], "std": [127.5]},
        "data": {"batch_size": 32, "val_batch_size": 128, "drop_last": True,
                 "train": {"type": "Digits", "split": "train", "image_size": 8, "pipeline": views},
                 "val": {"type": "Digits", "split": "val", "image_size": 8, "pipeline": views}},
        "train": {"epochs": 2, "device": "cpu", "checkpoint_every_steps": 5, "cpu_threads": 1,
                  "optimizer": {"type": "AdamW", "lr": 1e-3}, "schedule": {"type": "cosine", "warmup_epochs": 0.5}},
    }


@pytest.mark.parametrize("name", list(MODELS))
def test_sigkill_mid_epoch_then_resume_keeps_teacher_and_queue_bitwise(tmp_path: Path, name: str) -> None:
    spec = write_spec(tmp_path / "spec.toml", _spec(MODELS[name]))
    ref, run = tmp_path / "ref", tmp_path / "run"
    _train(spec, ref)
    info = _kill_when(spec, run, lambda i: i["epoch"] == 1 and i["step_in_epoch"] > 0)
    assert 0 < info["step_in_epoch"] < 44  # killed inside epoch 2, after a step checkpoint
    resumed = _train(spec, run, "--resume")
    assert "resuming" in resumed.stderr
    a, b = _tensors(ref / "checkpoints" / "last.state.safetensors"), _tensors(run / "checkpoints" / "last.state.safetensors")
    teacher = "model.momentum_encoder." if name == "MoCo" else "model.target_net."
    assert any(k.startswith(teacher + "module.") for k in a) and f"{teacher}steps" in a
    if name == "MoCo":
        assert {"model.queue.queue", "model.queue.queue_ptr"} <= a.keys()
        assert int(a["model.queue.queue_ptr"]) == (88 * 32) % 96  # 88 steps of 32 gathered keys
    assert int(a[f"{teacher}steps"]) == 88 + 1  # the initial copy + one update per step
    _assert_bitwise(a, b)  # weights, teacher, queue, optimizer moments, RNG states
    _assert_bitwise(_tensors(ref / "checkpoints" / "last.safetensors"), _tensors(run / "checkpoints" / "last.safetensors"))
