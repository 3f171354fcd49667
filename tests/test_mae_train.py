"""MAE training side: pretrain through ``pretrain train``, transfer, linear probe, reconstruct.

One short MAE pretraining run (``examples/specs/mae_vit-tiny_digits.toml`` for 3
epochs, in a temporary working directory so the example specs' relative checkpoint
path ``runs/mae_vit-tiny_digits/checkpoints/last.safetensors`` is the real one) is
shared by the tests that need its checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import pretrain
from pretrain import PretrainError
from pretrain.cli import _reconstruct
from pretrain.selfsup import BaseSelfSupervisor
from pretrain.spec.validate import validate_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "examples" / "specs"
MAE_SPEC = SPECS / "mae_vit-tiny_digits.toml"
FINETUNE_SPEC = SPECS / "vit-tiny_digits_finetune.toml"
PROBE_SPEC = SPECS / "vit-tiny_digits_linear_probe.toml"
#: Where the example transfer specs expect the MAE weights (relative to the working directory).
MAE_WEIGHTS = Path("runs/mae_vit-tiny_digits/checkpoints/last.safetensors")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
EPOCHS = 3


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pretrain", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600, check=False)


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Working directory holding ``runs/mae_vit-tiny_digits`` after a 3-epoch MAE run."""
    cwd = tmp_path_factory.mktemp("mae")
    proc = _cli("train", str(MAE_SPEC), "--plain", "--set", f"train.epochs={EPOCHS}", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd


@pytest.fixture
def in_run_dir(mae_run: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(mae_run)
    yield mae_run


def _spec(path: Path, *overrides: str) -> Any:
    # The transfer specs name the MAE run's checkpoint, which only the slow tests write.
    return validate_spec(pretrain.load_spec(str(path), list(overrides)), source=str(path), check_files=False)


# ----------------------------------------------------------------------------- specs


@pytest.mark.parametrize("path", [MAE_SPEC, FINETUNE_SPEC, PROBE_SPEC], ids=lambda p: p.stem)
def test_example_specs_validate(path: Path) -> None:
    spec = _spec(path)
    assert "train" in spec.sections and "data" in spec.sections


def test_transfer_specs_match_the_mae_encoder() -> None:
    """Same arch, image, patch and channels as the MAE encoder, and the engine's checkpoint name."""
    mae = pretrain.load_spec(str(MAE_SPEC))["model"]["backbone"]
    for path in (FINETUNE_SPEC, PROBE_SPEC):
        bb = pretrain.load_spec(str(path))["model"]["backbone"]
        for key in ("arch", "img_size", "patch_size", "in_channels"):
            assert bb[key] == mae[key], (path.name, key)
        (rule,) = bb["init"]
        assert rule == {"type": "Pretrained", "checkpoint": str(MAE_WEIGHTS), "prefix": "backbone."}
        # The path the trainer writes for a run of the MAE spec with the default run directory.
        from pretrain.engine.api import default_run_dir
        from pretrain.engine.rundir import RunDir

        assert RunDir(default_run_dir(str(MAE_SPEC))).last_weights == MAE_WEIGHTS


# ----------------------------------------------------------------------------- pretraining


@pytest.mark.slow
def test_mae_pretraining_loss_falls(mae_run: Path) -> None:
    run = mae_run / "runs" / "mae_vit-tiny_digits"
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == list(range(1, EPOCHS + 1))
    losses = [r["train_loss"] for r in history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses
    weights = load_file(str(mae_run / MAE_WEIGHTS))
    assert any(k.startswith("backbone.layers.") for k in weights)
    assert any(k.startswith("neck.decoder_blocks.") for k in weights)
    # data.val is scored by the reconstruction loss; the best checkpoint has the lowest.
    val = [r["val_loss"] for r in history]
    assert val[-1] < val[0], val
    assert (run / "checkpoints" / "best.safetensors").exists()


@pytest.mark.slow
def test_eval_reproduces_the_validation_reconstruction_loss(mae_run: Path) -> None:
    run = mae_run / "runs" / "mae_vit-tiny_digits"
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    proc = _cli("eval", str(MAE_SPEC), "--weights", str(MAE_WEIGHTS), "--json", cwd=mae_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout)
    assert metrics["num_samples"] == 359
    assert metrics["val_loss"] == pytest.approx(last["val_loss"], rel=1e-6)  # same fixed masks


# ----------------------------------------------------------------------------- transfer


@pytest.mark.slow
def test_finetune_spec_loads_the_mae_encoder(in_run_dir: Path) -> None:
    mae_weights = load_file(str(MAE_WEIGHTS))
    encoder = {k.removeprefix("backbone."): v for k, v in mae_weights.items() if k.startswith("backbone.")}
    model = pretrain.build_model(pretrain.load_spec(str(FINETUNE_SPEC)), seed=123)
    state = model.backbone.state_dict()
    # Every ViT weight comes from the MAE encoder (no mask token, fixed sin-cos pos_embed included).
    assert set(state) == set(encoder)
    for key, value in state.items():
        torch.testing.assert_close(value, encoder[key], rtol=0, atol=0, msg=key)
    # Fine-tuning trains everything, including the (now learnable) position embedding.
    assert all(p.requires_grad for p in model.backbone.parameters())
    # ... and the classifier runs on digits-shaped input.
    out = model.predict(torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8))
    assert out["scores"].shape == (2, 10)


@pytest.mark.slow
def test_linear_probe_spec_freezes_the_whole_backbone(in_run_dir: Path) -> None:
    model = pretrain.build_model(pretrain.load_spec(str(PROBE_SPEC)), seed=0)
    assert sum(p.numel() for p in model.backbone.parameters() if p.requires_grad) == 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.layers.head.weight", "head.layers.head.bias"}
    model.train()
    # Every frozen layer stays in eval mode (no dropout / drop-path) under model.train().
    leaves = [(n, m) for n, m in model.backbone.named_modules() if not list(m.children())]
    assert leaves and [n for n, m in leaves if m.training] == []
    loss = model.loss(torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8), torch.arange(4))["loss"]
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.head.layers.head.weight.grad is not None


@pytest.mark.slow
def test_linear_probe_training_leaves_the_encoder_unchanged(in_run_dir: Path) -> None:
    """Through ``pretrain train``: the probe's saved backbone is exactly the MAE encoder."""
    proc = _cli("train", str(PROBE_SPEC), "--plain", "--run-dir", "runs/probe",
                "--set", "train.epochs=1", "--set", "train.max_steps=5", cwd=in_run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = load_file("runs/probe/checkpoints/last.safetensors")
    mae = load_file(str(MAE_WEIGHTS))
    backbone = [k for k in probe if k.startswith("backbone.")]
    assert backbone and all(torch.equal(probe[k], mae[k]) for k in backbone)
    assert probe["head.layers.head.weight"].abs().sum() > 0  # zero-initialised, then trained


# ----------------------------------------------------------------------------- reconstruct


def _reconstruct_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="pretrain")
    _reconstruct.add_parser(parser.add_subparsers())
    args = parser.parse_args(["reconstruct", *argv])
    return int(args.run(args))


@pytest.mark.slow
def test_reconstruct_writes_a_png_grid(in_run_dir: Path) -> None:
    out = in_run_dir / "grid" / "recon.png"
    assert _reconstruct_cli(str(MAE_SPEC), "--weights", "runs/mae_vit-tiny_digits",
                            "--out", str(out), "--num", "5", "--scale", "3") == 0
    with Image.open(out) as img:
        img.verify()
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        gap, tile = _reconstruct.GAP, 16 * 3
        assert img.size == (5 * (tile + gap) + gap, 3 * (tile + gap) + gap)
        # The masked row shows removed patches in the mask colour.
        masked_row = img.crop((gap, 2 * gap + tile, gap + tile, 2 * gap + 2 * tile))
        assert _reconstruct.MASK_COLOUR in {c for _, c in masked_row.getcolors(tile * tile)}


@pytest.mark.slow
def test_reconstruction_keeps_visible_pixels(in_run_dir: Path) -> None:
    spec = _spec(MAE_SPEC)
    images = _reconstruct.reconstruct_images(spec, MAE_WEIGHTS, num=6, seed=1)
    x, rec, mask = images["input"], images["reconstruction"], images["mask"]
    assert x.shape == rec.shape == (6, 1, 16, 16) and mask.shape == (6, 1, 16, 16)
    ratio = pretrain.load_spec(str(MAE_SPEC))["model"]["backbone"]["mask_ratio"]
    assert mask.mean().item() == pytest.approx(round(16 * ratio) / 16)  # of the 16 4x4 patches
    torch.testing.assert_close(rec * (1 - mask), x * (1 - mask), atol=1e-3, rtol=0)
    assert not torch.allclose(rec * mask, x * mask)  # removed pixels are predicted, not copied
    torch.testing.assert_close(images["masked"], x * (1 - mask))
    # The masks are random but reproducible.
    again = _reconstruct.reconstruct_images(spec, MAE_WEIGHTS, num=6, seed=1)
    assert torch.equal(again["mask"], mask)


def test_reconstruct_needs_a_reconstruct_method(tmp_path: Path) -> None:
    with pytest.raises(PretrainError, match=r"no reconstruct\(\) method"):
        _reconstruct.reconstruct_images(_spec(SPECS / "quickstart.toml"), tmp_path / "w.safetensors", num=2)


def test_reconstruct_command_is_torch_free_at_import() -> None:
    code = "import sys, pretrain.cli._reconstruct; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV, timeout=60)


# ----------------------------------------------------------------------------- docs/selfsup.md


def _doc_block(lang: str, needle: str) -> str:
    text = (ROOT / "docs" / "selfsup.md").read_text(encoding="utf-8")
    blocks = re.findall(rf"```{lang}\n(.*?)```", text, flags=re.DOTALL)
    (block,) = [b for b in blocks if needle in b]
    return block


@pytest.mark.slow
def test_selfsup_doc_worked_example_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TinySimSiam code and spec of docs/selfsup.md validate, build and lower their loss."""
    (tmp_path / "doc_simsiam.py").write_text(_doc_block("python", "class TinySimSiam"), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("doc_simsiam")
    (tmp_path / "simsiam.toml").write_text(_doc_block("toml", 'type = "TinySimSiam"'), encoding="utf-8")
    raw = pretrain.load_spec(str(tmp_path / "simsiam.toml"), ["train.epochs=3"])
    registry = pretrain.get_registry()
    registry.register("model", "TinySimSiam", module.TinySimSiam)
    try:
        from pretrain.engine.trainer import Trainer

        spec = validate_spec(raw)
        trainer = Trainer(spec, tmp_path / "run", live=False)
        trainer.fit()
        losses = [r["train_loss"] for r in trainer.state.history]
        assert losses[-1] < losses[0] - 0.05, losses
        assert isinstance(trainer.model, BaseSelfSupervisor)
        feats = trainer.model.extract_feat(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))
        assert feats[-1].shape[:2] == (2, 128)
    finally:
        registry.unregister("model", "TinySimSiam")
