"""TIMMBackbone: any timm model as a backbone, validated, shape-checked and trained.

Uses timm's tiny ``test_*`` models (no weights are downloaded: ``pretrained = true``
is exercised with a fake local Hugging Face cache).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pretrain import PretrainError, SpecError
from pretrain.assembly.assemble import build_from_spec
from pretrain.cli._main import run_cli
from pretrain_builtins.backbones import timm_backbone
from pretrain_builtins.backbones.timm_backbone import TIMMBackbone, find_cached_weights

timm = pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "examples" / "specs"
#: The three example specs: a CNN, a ViT and a hybrid (conv + attention stages).
FAMILIES = {
    "resnet": ("test_resnet", {}),
    "vit": ("test_vit", {"img_size": 32, "patch_size": 4}),
    "coatnet": ("test_coatnet", {"img_size": 32}),
}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def validate_json(path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    code = run_cli(["validate", str(path), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0, payload
    return payload


@pytest.mark.parametrize("family", list(FAMILIES))
def test_example_specs_validate_with_timms_parameter_count(family: str, capsys) -> None:
    """Shape-checked on meta; parameters = timm's ``create_model(num_classes=0)`` + our head."""
    payload = validate_json(SPECS / f"timm-{family}_digits.toml", capsys)
    name, kwargs = FAMILIES[family]
    reference = timm.create_model(name, num_classes=0, **kwargs)
    head = reference.num_features * 10 + 10
    assert payload["ok"] and payload["params"] == n_params(reference) + head


def test_outputs_and_out_channels() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    cnn = TIMMBackbone(model_name="test_resnet")
    (out,) = cnn(x)
    assert out.shape == (2, 96, 1, 1) and cnn.out_channels == (96,)  # unpooled, like MMPretrain
    pooled = TIMMBackbone(model_name="test_resnet", global_pool="avg")
    assert pooled(x)[0].shape == (2, 96)
    vit = TIMMBackbone(model_name="test_vit", img_size=32, model_kwargs={"patch_size": 4})
    assert vit(x)[0].shape == (2, 65, 64) and vit.out_channels == (64,)  # raw tokens
    pyramid = TIMMBackbone(model_name="test_convnext", features_only=True, out_indices=(1, 3))
    outs = pyramid(x)
    assert [o.shape[1] for o in outs] == list(pyramid.out_channels) and len(outs) == 2
    gray = TIMMBackbone(model_name="test_resnet", in_channels=1)
    assert gray(torch.randn(2, 1, 32, 32))[0].shape == (2, 96, 1, 1)


def test_meta_build_allocates_no_weights() -> None:
    with torch.device("meta"):
        backbone = TIMMBackbone(model_name="test_vit", img_size=32, drop_path_rate=0.1)
        (out,) = backbone(torch.empty(2, 3, 32, 32))
    assert out.is_meta and all(p.is_meta for p in backbone.parameters())
    # Patching stays local to the build.
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"


@pytest.mark.parametrize(
    ("spec", "loc", "words"),
    [
        ({"model_name": "resnet_18"}, "model_name", "did you mean 'resnet18'"),
        ({"model_name": "vit_tiny"}, "model_name", "vit_tiny_patch16_224"),
        ({"model_name": "test_resnet", "out_indices": [1]}, "out_indices", "features_only"),
    ],
)
def test_spec_errors(spec: dict, loc: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        build_from_spec("backbone", {"type": "TIMMBackbone", **spec})
    assert f"backbone.{loc}" in str(info.value) and words in str(info.value)


def test_missing_timm_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    issues = list(TIMMBackbone.spec_issues({"model_name": "resnet18"}))
    assert issues and issues[0][0] == "model_name" and "pip install pretrain[timm]" in issues[0][1]
    with pytest.raises(PretrainError, match="needs the timm package") as info:
        TIMMBackbone(model_name="resnet18")
    assert "pip install pretrain[timm]" in str(info.value)


def test_pretrained_never_downloads(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(timm_backbone, "_torch_hub_checkpoints", lambda: tmp_path / "torch")
    with pytest.raises(PretrainError, match="never downloads") as info:
        TIMMBackbone(model_name="test_resnet", pretrained=True)
    assert str(tmp_path / "hub" / "models--timm--test_resnet.r160_in1k") in str(info.value)
    assert "checkpoint_path" in str(info.value.hint)
    # validate (meta device) reports the same problem instead of loading nothing silently
    with torch.device("meta"), pytest.raises(PretrainError, match="not on this machine"):
        TIMMBackbone(model_name="test_resnet", pretrained=True)


def test_pretrained_loads_from_the_local_hub_cache(tmp_path, monkeypatch) -> None:
    torch.manual_seed(1)
    source = timm.create_model("test_resnet")
    snapshot = tmp_path / "hub" / "models--timm--test_resnet.r160_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(snapshot / "model.safetensors"))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert find_cached_weights("test_resnet")[0] == snapshot / "model.safetensors"
    backbone = TIMMBackbone(model_name="test_resnet", pretrained=True, global_pool="avg").eval()
    source.reset_classifier(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)[0], source.eval()(x))


def test_checkpoint_path(tmp_path) -> None:
    torch.manual_seed(2)
    source = timm.create_model("test_resnet")
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)
    backbone = TIMMBackbone(model_name="test_resnet", checkpoint_path=str(path))
    assert isinstance(backbone.timm_model.fc, torch.nn.Identity)  # classifier removed
    assert torch.equal(backbone.state_dict()["timm_model.layer1.0.conv1.weight"],
                       source.state_dict()["layer1.0.conv1.weight"])
    headless = tmp_path / "headless.safetensors"  # saved from num_classes=0: no classifier keys
    save_file(timm.create_model("test_resnet", num_classes=0).state_dict(), str(headless))
    TIMMBackbone(model_name="test_resnet", checkpoint_path=str(headless))
    torch.save(timm.create_model("test_vit").state_dict(), path)
    with pytest.raises(PretrainError, match="does not fit timm model 'test_resnet'.*missing: conv1"):
        TIMMBackbone(model_name="test_resnet", checkpoint_path=str(path))
    with pytest.raises(PretrainError, match="is not a file"):
        TIMMBackbone(model_name="test_resnet", checkpoint_path=str(tmp_path / "nope.pth"))
    torch.save({"weights": source.state_dict(), "config": torch.nn.ReLU()}, path)
    with pytest.raises(PretrainError, match="never unpickles"):
        TIMMBackbone(model_name="test_resnet", checkpoint_path=str(path))


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_trains_one_epoch_on_the_digits(family: str, tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    run_dir = tmp_path / family
    proc = subprocess.run(
        [sys.executable, "-m", "pretrain", "train", str(SPECS / f"timm-{family}_digits.toml"), "--plain",
         "--run-dir", str(run_dir), "--set", "train.epochs=1", "--set", "train.schedule.warmup_epochs=0"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1 and record["train_loss"] < 2.5  # ln(10) = 2.30 is chance
    assert record["accuracy/top1"] > 10.0  # better than chance after one epoch
    assert (run_dir / "checkpoints" / "best.safetensors").is_file()
