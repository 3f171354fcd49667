"""The preset ImageNet specs of the new backbone families validate (``pretrain validate``)
and have MMPretrain's (and torchvision's/timm's) parameter counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pretrain
from pretrain.cli._main import run_cli

SPECS = Path(__file__).resolve().parents[1] / "examples" / "specs"

#: spec -> parameters (MMPretrain's model; equal to the torchvision/timm model in the comment).
EXPECTED = {
    "convnext-tiny_imagenet": 28_589_128,  # torchvision convnext_tiny
    "convnext-v2-atto_imagenet": 3_708_400,  # timm convnextv2_atto
    "efficientnet-b0_imagenet": 5_288_548,  # torchvision efficientnet_b0
    "efficientnetv2-s_imagenet": 21_458_488,  # torchvision efficientnet_v2_s
    "regnetx-400mf_imagenet": 5_157_512,  # timm regnetx_004; MMPretrain metafile 5.16 M
    "resnext50-32x4d_imagenet": 25_028_904,  # torchvision resnext50_32x4d
    "wide-resnet50_imagenet": 68_883_240,  # torchvision wide_resnet50_2
    "seresnet50_imagenet": 28_088_024,  # timm seresnet50
    "deit-tiny-distilled_imagenet": 5_910_800,  # timm deit_tiny_distilled_patch16_224
    "deit3-small-p16_imagenet": 22_059_496,  # timm deit3_small_patch16_224
    "mobilenet_v3_large_imagenet": 5_483_032,  # torchvision mobilenet_v3_large
}


@pytest.mark.parametrize(("name", "params"), EXPECTED.items(), ids=list(EXPECTED))
def test_preset_spec_validates_with_mmpretrain_parameter_count(name: str, params: int, capsys) -> None:
    code = run_cli(["validate", str(SPECS / f"{name}.toml"), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["ok"], payload["errors"]
    assert payload["params"] == params


@pytest.mark.parametrize("name", list(EXPECTED))
def test_preset_specs_are_complete_training_recipes(name: str) -> None:
    spec = pretrain.load_spec(str(SPECS / f"{name}.toml"))
    assert {"model", "data", "train", "eval"} <= set(spec)
    assert spec["data"]["train"]["type"] == "ImageFolder" and spec["train"]["epochs"] >= 100
    assert spec["train"]["optimizer"]["type"] in ("SGD", "AdamW", "RMSprop")


@pytest.mark.parametrize(
    ("name", "presets"),
    [
        ("ConvNeXt", ["atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "xlarge", "huge"]),
        ("EfficientNet", ["b0", "b4", "b8", "l2", "es", "em", "el"]),
        ("EfficientNetV2", ["small", "medium", "large", "xl", "b3"]),
        ("RegNet", ["regnetx_400mf", "regnetx_12gf", "regnet_x_400mf", "regnet_x_32gf"]),
        ("DeiT3", ["small", "medium", "base", "large", "huge"]),
        ("DistilledVisionTransformer", ["deit-tiny", "deit-small", "deit-base"]),
        ("MobileNetV3", ["small_075", "large"]),
    ],
)
def test_describe_lists_the_arch_presets(name: str, presets: list[str], capsys) -> None:
    assert run_cli(["describe", name, "--json"]) == 0
    arch = json.loads(capsys.readouterr().out)["properties"]["arch"]
    for preset in presets:
        assert preset in arch["description"], preset
