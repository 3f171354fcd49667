"""One regression test per defect of the reliability issue (each fails on the code before its fix).

Runs go through the real CLI (in-process where possible, a subprocess where a
second process or a plugin's ``sys.exit()`` is the point), on tiny specs.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from _bad_input_helpers import assert_clear_error, cli, snapshot
from _engine_specs import TINY_RESNET, tiny_spec, write_spec
from conftest import SPECS, write_dist
from pretrain.engine import checkpoint as ckpt
from pretrain.errors import PretrainError
from pretrain_builtins.datasets.image_folder import ImageFolder


def _quick_spec(tmp_path: Path, **train: Any) -> Path:
    """A spec that trains 4 steps of a ~11k-parameter ResNet on 8x8 digits (about a second)."""
    return write_spec(tmp_path / "spec.toml", tiny_spec(max_steps=4, **train))


def _write_images(folder: Path, n: int, value: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8), (value + 17 * i) % 256, dtype=np.uint8)).save(folder / f"{i}.png")


# ----------------------------------------------------------------------------- item 2: --resume


def test_resume_without_state_refuses_and_touches_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec, run = _quick_spec(tmp_path), tmp_path / "run"
    assert cli(capsys, "train", spec, "--run-dir", run, "--plain").code == 0
    (run / "checkpoints" / "last.state.safetensors").unlink()
    before = snapshot(run)
    assert {"checkpoints/best.safetensors", "checkpoints/last.safetensors", "metrics.jsonl"} <= set(before)
    res = cli(capsys, "train", spec, "--run-dir", run, "--resume", "--plain")
    assert_clear_error(res, "last.state.safetensors", "is missing", "nothing was changed")
    assert snapshot(run) == before  # best, last and metrics.jsonl byte-identical


def test_resume_with_a_damaged_state_refuses_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, run = _quick_spec(tmp_path), tmp_path / "run"
    assert cli(capsys, "train", spec, "--run-dir", run, "--plain").code == 0
    state = run / "checkpoints" / "last.state.safetensors"
    data = bytearray(state.read_bytes())
    data[-5] ^= 0x40  # one bit of the tensor data
    state.write_bytes(bytes(data))
    before = snapshot(run)
    res = cli(capsys, "train", spec, "--run-dir", run, "--resume", "--plain")
    assert_clear_error(res, str(state), "checksum mismatch", "nothing in the run directory was changed")
    assert snapshot(run) == before


# ----------------------------------------------------------------------------- item 3: plugins


def _install_exiting_plugins(site: Path) -> None:
    """A hook plugin and a component plugin that both call sys.exit() when imported."""
    write_dist(site, "exit-hooks", version="0.1", entry_points={"pretrain.plugins": {"exiting": "fakeplug_exit_hook"}},
               modules={"fakeplug_exit_hook.py": "import argparse\nargparse.ArgumentParser().parse_args(['--nope'])\n"})
    write_dist(site, "exit-comps", version="0.2", entry_points={"pretrain.backbones": {"ExitNet": "fakeplug_exit_comp:Net"}},
               modules={"fakeplug_exit_comp.py": "import sys\nsys.exit(2)\n"})


def test_plugins_calling_sys_exit_at_import_cannot_silence_the_tool(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _install_exiting_plugins(site)
    quick = SPECS / "quickstart.toml"
    res = cli(capsys, "validate", quick)
    assert res.code == 0 and "is valid" in res.out, res.err
    assert "skipped a broken plugin" in res.flat and "exit-hooks 0.1" in res.flat and "sys.exit()" in res.flat
    bad = tmp_path / "bad.toml"
    bad.write_text(quick.read_text().replace('type = "ResNet_CIFAR"', 'type = "ExitNet"'))
    assert_clear_error(cli(capsys, "validate", bad), "model.backbone.type", "exit-comps 0.2", "SystemExit(2)")
    res = cli(capsys, "plugins")
    assert res.code == 0 and "exit-hooks" in res.flat, res.err
    res = cli(capsys, "schema", "-o", tmp_path / "schema.json")
    assert res.code == 0 and (tmp_path / "schema.json").stat().st_size > 1000, res.err
    res = cli(capsys, "train", _quick_spec(tmp_path), "--run-dir", tmp_path / "run", "--plain")
    assert res.code == 0 and "skipped a broken plugin" in res.flat and "exit-hooks 0.1" in res.flat, res.err


def test_a_hook_raising_in_epoch_end_names_its_plugin(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_dist(site, "noisy-hooks", version="2.5", entry_points={"pretrain.plugins": {"noisy": "fakeplug_noisy"}},
               modules={"fakeplug_noisy.py": (
                   "from pretrain.hookspecs import hookimpl\n"
                   "@hookimpl\n"
                   "def pretrain_epoch_end(trainer, epoch, metrics):\n"
                   "    raise RuntimeError('tracker offline')\n")})
    spec, run = _quick_spec(tmp_path), tmp_path / "run"
    res = cli(capsys, "train", spec, "--run-dir", run, "--plain")
    assert_clear_error(res, "pretrain_epoch_end", "noisy-hooks 2.5", "tracker offline", "--resume")
    assert (run / "checkpoints" / "last.safetensors").is_file()  # written before the hook ran


def test_a_component_plugin_failing_at_run_time_is_named_not_reported_as_ours(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_dist(site, "boom-nets", version="0.3", entry_points={"pretrain.backbones": {"BoomNet": "fakeplug_boom:BoomNet"}},
               modules={"fakeplug_boom.py": (
                   "from pretrain.components import BaseBackbone\n"
                   "from torch import nn\n"
                   "class BoomNet(BaseBackbone):\n"
                   "    def __init__(self) -> None:\n"
                   "        super().__init__()\n"
                   "        self.conv = nn.Conv2d(1, 32, 3, padding=1)\n"
                   "    def forward(self, x):\n"
                   "        if x.shape[0] > 2:  # passes validate's batch-2 step check, fails in training\n"
                   "            raise ValueError('boom on real data')\n"
                   "        return (self.conv(x),)\n")})
    raw = tiny_spec(max_steps=2)
    raw["model"]["backbone"] = {"type": "BoomNet"}
    res = cli(capsys, "train", write_spec(tmp_path / "s.toml", raw), "--run-dir", tmp_path / "run", "--plain")
    assert_clear_error(res, "model.backbone: component BoomNet (from distribution boom-nets, version 0.3) raised",
                       "boom on real data", "report it to its authors")


# ----------------------------------------------------------------------------- item 4: run directories


@pytest.mark.slow
def test_two_concurrent_runs_on_one_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path / "spec.toml", tiny_spec(epochs=200))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "300"}
    first = subprocess.Popen([sys.executable, "-m", "pretrain.cli", "train", str(spec), "--run-dir", str(run),
                              "--plain"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        lock = run / ".pretrain.lock"
        while not (lock.exists() and lock.read_text().startswith("pid")):
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        second = cli(capsys, "train", spec, "--run-dir", run, "--plain")  # a second run (this process)
        assert_clear_error(second, f"{run} is in use by a running `pretrain train` (pid {first.pid} on")
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(60)


def test_fresh_start_in_a_non_empty_directory_keeps_the_users_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `pretrain train spec.toml --run-dir .`: the run would write its own spec.toml over the user's.
    spec = _quick_spec(tmp_path)
    before = snapshot(tmp_path)
    res = cli(capsys, "train", spec, "--run-dir", tmp_path, "--plain")
    assert_clear_error(res, str(tmp_path), "spec.toml", "not a run's", "--run-dir")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- item 5: checks before the run


def test_train_runs_the_shape_check_before_creating_the_run_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    res = cli(capsys, "train", SPECS / "quickstart.toml", "--set", "model.head.in_channels=256", "--run-dir", run)
    assert_clear_error(res, "model.head.in_channels", "is 256", "outputs 128 channels")
    assert not run.exists()


def test_a_two_class_dataset_with_the_default_eval_trains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for split in ("train", "val"):
        _write_images(tmp_path / "data" / split / "cat", 6, 10)
        _write_images(tmp_path / "data" / split / "dog", 6, 200)
    model = copy.deepcopy(TINY_RESNET)
    model["head"].update(num_classes=2, topk=[1])
    data = {"batch_size": 4, "image_size": 8,
            "train": {"type": "ImageFolder", "root": str(tmp_path / "data" / "train"), "image_size": 8},
            "val": {"type": "ImageFolder", "root": str(tmp_path / "data" / "val"), "image_size": 8}}
    raw = tiny_spec(model, data=data, epochs=1)
    del raw["eval"]  # the default [eval]: top-1 and top-5
    run = tmp_path / "run"
    res = cli(capsys, "train", write_spec(tmp_path / "two.toml", raw), "--run-dir", run, "--plain")
    assert res.code == 0, res.err
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "accuracy/top1" in record and "accuracy/top5" not in record
    # An explicit top-5 on two classes is a validation error, before anything is created.
    raw["eval"] = {"topk": [1, 5]}
    res = cli(capsys, "train", write_spec(tmp_path / "five.toml", raw), "--run-dir", tmp_path / "run5")
    assert_clear_error(res, "eval.topk", "top-5", "2 classes")
    assert not (tmp_path / "run5").exists()


# ----------------------------------------------------------------------------- item 9: wording


def test_a_full_disk_names_the_file_and_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    spec, run = _quick_spec(tmp_path), tmp_path / "run"

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    res = cli(capsys, "train", spec, "--run-dir", run, "--plain")
    assert_clear_error(res, f"cannot write {run / 'spec.toml'}: No space left on device", "Free space", "--resume")
    assert not any(p.name.startswith(".spec.toml.tmp") for p in run.iterdir())


def test_a_non_finite_loss_with_no_checkpoint_does_not_suggest_resuming(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_spec(max_steps=4)
    raw["model"]["head"]["loss"] = {"type": "CrossEntropyLoss", "loss_weight": 1e300}  # inf in float32
    res = cli(capsys, "train", write_spec(tmp_path / "s.toml", raw), "--run-dir", tmp_path / "run", "--plain")
    assert_clear_error(res, "the loss became inf at step 1", "nothing to resume from")
    assert "--resume" not in res.flat


# ----------------------------------------------------------------------------- item 6: Pretrained


def _pretrained_spec(tmp_path: Path, weights: dict[str, torch.Tensor], damage: Any = None) -> dict[str, Any]:
    path = tmp_path / "backbone.safetensors"
    ckpt.save_tensors(path, weights, {})
    if damage is not None:
        path.write_bytes(damage(bytearray(path.read_bytes())))
    model = copy.deepcopy(TINY_RESNET)
    model["backbone"]["init"] = [{"type": "Pretrained", "checkpoint": str(path)}]
    return {"model": model}


def _backbone_weights() -> dict[str, torch.Tensor]:
    import pretrain

    return dict(pretrain.build_model({"model": copy.deepcopy(TINY_RESNET)}).backbone.state_dict())


def _flip(data: bytearray) -> bytes:
    data[-7] ^= 0x01  # a single bit of the last tensor
    return bytes(data)


def test_a_bit_flipped_pretrained_checkpoint_is_refused(tmp_path: Path) -> None:
    import pretrain

    spec = _pretrained_spec(tmp_path, _backbone_weights(), damage=_flip)
    with pytest.raises(PretrainError, match=r"model\.backbone\.init\[0\]: checkpoint .*checksum mismatch"):
        pretrain.build_model(spec)


@pytest.mark.parametrize("bad", ["int8", "bool", "nan", "inf"])
def test_pretrained_refuses_integer_boolean_and_non_finite_weights(tmp_path: Path, bad: str) -> None:
    import pretrain

    weights = _backbone_weights()
    key = "layer1.0.conv1.weight"
    if bad in ("int8", "bool"):
        weights[key] = weights[key].to(getattr(torch, bad))
    else:
        weights[key] = weights[key].clone()
        weights[key].view(-1)[3] = float(bad)
    spec = _pretrained_spec(tmp_path, weights)
    expected = "is int8|is bool" if bad in ("int8", "bool") else "holds 1 NaN or infinite"
    with pytest.raises(PretrainError, match=rf"model\.backbone\.init\[0\].*tensor '{key}' ({expected})"):
        pretrain.build_model(spec)


# ----------------------------------------------------------------------------- item 7: ImageFolder


def test_image_folder_does_not_follow_symlink_cycles(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    _write_images(root / "cat", 3, 10)
    _write_images(root / "dog", 2, 200)
    (root / "cat" / "loop").symlink_to("..")  # cat/loop/dog/... would label dogs as cats
    (root / "dog" / "again.png").symlink_to(root / "dog" / "0.png")  # one file reached twice
    with pytest.warns(UserWarning, match="symbolic links lead back into the dataset"):
        dataset = ImageFolder(root=str(root))
    assert len(dataset) == 5  # 3 cats, 2 dogs (the link to dog/0.png counted once)
    assert dataset.targets.tolist() == [0, 0, 0, 1, 1]
    assert all("loop" not in path for path, _ in dataset.samples)


# ----------------------------------------------------------------------------- item 8: validation bounds


def test_absurd_models_fail_validate_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vit = tmp_path / "vit.toml"
    vit.write_text('[model]\ntype = "ImageClassifier"\n[model.backbone]\ntype = "VisionTransformer"\n'
                   'arch = {embed_dims = 192, num_layers = 1e6, num_heads = 3, feedforward_channels = 768}\n'
                   '[model.head]\ntype = "LinearClsHead"\nnum_classes = 10\nin_channels = 192\n')
    wide = tmp_path / "wide.toml"  # ResNet_CIFAR-18 at base width 1,000,000: ~2.7e15 parameters
    wide.write_text('[model]\ntype = "ImageClassifier"\n[model.backbone]\ntype = "ResNet_CIFAR"\ndepth = 18\n'
                    'base_channels = 1000000\n[model.head]\ntype = "LinearClsHead"\nnum_classes = 10\n'
                    'in_channels = 8000000\n')
    cli(capsys, "validate", SPECS / "quickstart.toml")  # imports and caches warm
    for spec, named in ((vit, ["model.backbone.arch", "num_layers = 1000000"]),
                        (wide, ["model:", "parameters", "above the ceiling of 20 B", "PRETRAIN_MAX_PARAMS"])):
        t0 = time.perf_counter()
        res = cli(capsys, "validate", spec)
        assert time.perf_counter() - t0 < 1.0
        assert_clear_error(res, *named)


def test_the_parameter_ceiling_is_configurable(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    quick = SPECS / "quickstart.toml"  # 701,178 parameters
    monkeypatch.setenv("PRETRAIN_MAX_PARAMS", "500k")
    assert_clear_error(cli(capsys, "validate", quick), "701,178 parameters", "ceiling of 500 k")
    monkeypatch.setenv("PRETRAIN_MAX_PARAMS", "lots")
    assert_clear_error(cli(capsys, "validate", quick), "PRETRAIN_MAX_PARAMS = 'lots'")
    assert cli(capsys, "--max-params", "1M", "validate", quick).code == 0
    assert os.environ["PRETRAIN_MAX_PARAMS"] == "1M"


def test_a_50k_part_dotted_key_fails_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "dotted.toml"
    spec.write_text(".".join(["a"] * 50_000) + " = 1\n")  # 100 kB: parsing took 65 s, then a RecursionError
    t0 = time.perf_counter()
    res = cli(capsys, "validate", spec)
    assert time.perf_counter() - t0 < 1.0
    assert_clear_error(res, "dotted.toml line 1", "more than 32 parts")


def test_spec_files_are_size_capped_before_reading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.toml"
    with open(big, "wb") as fh:  # sparse: 200 MiB on paper, nothing on disk
        fh.truncate(200 * 2**20)
    child = tmp_path / "child.toml"
    child.write_text('extends = "big.toml"\n[model]\ntype = "ImageClassifier"\n')
    for spec in (big, child):
        t0 = time.perf_counter()
        res = cli(capsys, "validate", spec)
        assert time.perf_counter() - t0 < 1.0
        assert_clear_error(res, f"{big} is 200.0 MiB", "at most 10 MiB")


def test_utf8_specs_with_a_byte_order_mark_are_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bom.toml"
    spec.write_bytes(b"\xef\xbb\xbf" + (SPECS / "quickstart.toml").read_bytes())
    res = cli(capsys, "validate", spec)
    assert res.code == 0, res.err
