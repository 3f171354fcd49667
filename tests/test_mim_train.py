"""MIM end to end through ``pretrain train``: masked batches, bitwise resume, the tokenizer's refusal, reconstruct."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import tomllib

from _engine_specs import write_spec
from conftest import SPECS
from pretrain import load_spec, validate_spec
from test_resume import ENV, _assert_bitwise, _cmd, _kill_when, _strip_times, _tensors, _train

MIM_SPECS = ["maskfeat_vit-tiny_digits.toml", "simmim_swin-tiny_digits.toml", "beitv2_vit-tiny_digits_smoke.toml",
             "beit_beit-base-p16_imagenet.toml", "beitv2_beit-base-p16_imagenet.toml",
             "maskfeat_vit-base-p16_imagenet.toml", "simmim_swin-base-w6_imagenet-192px.toml",
             "beit-base-p16_imagenet_finetune.toml", "vit-base-p16_maskfeat_imagenet_finetune.toml",
             "swin-base-w6_simmim_imagenet-192px_finetune.toml", "swin-tiny_digits_linear_probe.toml"]


@pytest.mark.parametrize("name", MIM_SPECS)
def test_mim_example_specs_validate(name: str) -> None:
    validate_spec(load_spec(str(SPECS / name)), check_files=False)  # checkpoints of other runs


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def small(name: str, **train: Any) -> dict[str, Any]:
    """A digits spec cut down to seconds: tiny encoder, 8x8 images, a few hundred samples."""
    spec = tomllib.loads((SPECS / name).read_text())
    spec["train"].update({"epochs": 2, "checkpoint_every_steps": 3, **train})
    spec["data"]["batch_size"] = 32
    return spec


@pytest.mark.slow
def test_simmim_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path: Path) -> None:
    spec = small("simmim_swin-tiny_digits.toml")
    spec["model"]["backbone"]["arch"] = {"embed_dims": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]}
    spec["model"]["neck"]["in_channels"] = 64
    path = write_spec(tmp_path / "spec.toml", spec)
    ref, run = tmp_path / "ref", tmp_path / "run"
    _train(path, ref)
    info = _kill_when(path, run, lambda i: i["epoch"] == 1 and i["step_in_epoch"] > 0)
    assert info["step_in_epoch"] > 0
    resumed = _train(path, run, "--resume")
    assert "resuming" in resumed.stderr
    for name in ("last.safetensors", "last.state.safetensors"):
        _assert_bitwise(_tensors(ref / "checkpoints" / name), _tensors(run / "checkpoints" / name))
    assert _strip_times(_metrics(ref)) == _strip_times(_metrics(run))
    # The reconstruction grid of the resumed run, masks from [data.val]'s generator.
    png = tmp_path / "simmim.png"
    out = subprocess.run([*_cmd(path, run)[:3], "reconstruct", str(path), "--weights", str(run), "--out", str(png),
                          "--num", "4"], capture_output=True, text=True, env=ENV, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert png.stat().st_size > 0 and "62 % of the pixels removed" in out.stdout  # ceil(16 · 0.6) = 10 of 16 blocks


@pytest.mark.slow
def test_training_refuses_a_random_tokenizer(tmp_path: Path) -> None:
    spec = small("beitv2_vit-tiny_digits_smoke.toml")
    spec["model"]["target_generator"]["allow_random_init"] = False
    path = write_spec(tmp_path / "spec.toml", spec)
    proc = subprocess.run(_cmd(path, tmp_path / "run"), capture_output=True, text=True, env=ENV, timeout=300,
                          check=False)
    assert proc.returncode == 1
    assert "random weights" in proc.stderr and "allow_random_init" in proc.stderr
