"""Weight conversion for CNNs: torchvision/timm ResNet and MobileNetV2 → our classifier.

Reference models are built locally with random weights (never downloaded);
BatchNorm statistics and affine parameters are randomised so that a wrong
mapping of any BN tensor changes the logits.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file
from torch import nn

from pretrain.cli._convert import convert_file, find_converter, load_state_dict
from pretrain.errors import PretrainError
from pretrain_builtins.backbones.mobilenet_v2 import MobileNetV2
from pretrain_builtins.backbones.resnet import ResNet, ResNetV1c, ResNetV1d
from pretrain_builtins.converters import WeightConversionError
from pretrain_builtins.converters import mobilenet as mobilenet_converter
from pretrain_builtins.converters import resnet as resnet_converter
from pretrain_builtins.heads.cls_head import LinearClsHead
from pretrain_builtins.necks.gap import GlobalAveragePooling

timm = pytest.importorskip("timm")

TOLERANCE = 1e-4


BACKBONES: dict[str, type[nn.Module]] = {
    "ResNet": ResNet, "ResNetV1c": ResNetV1c, "ResNetV1d": ResNetV1d, "MobileNetV2": MobileNetV2,
}


class Classifier(nn.Module):
    """backbone → neck → head with the real components and ImageClassifier's attribute names.

    Built directly (no init rules: every weight is loaded from the converted dict).
    """

    def __init__(self, backbone: dict[str, object], num_classes: int = 1000) -> None:
        super().__init__()
        params = {k: v for k, v in backbone.items() if k != "type"}
        self.backbone = BACKBONES[str(backbone["type"])](**params)
        self.neck = GlobalAveragePooling()
        self.head = LinearClsHead(num_classes=num_classes, in_channels=self.backbone.out_channels[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.backbone(x)))  # (B, num_classes)


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
    return model.eval()


def assert_parity(reference: nn.Module, converted: dict[str, torch.Tensor], ours: nn.Module) -> None:
    ours.load_state_dict(converted, strict=True)
    ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        got = ours(x)
    assert expected.std() > 0.01  # not a degenerate comparison
    assert (got - expected).abs().max().item() <= TOLERANCE


CASES: list[tuple[str, str, Callable[[], nn.Module], dict[str, object]]] = [
    ("torchvision", "resnet18", torchvision.models.resnet18, {"type": "ResNet", "depth": 18}),
    ("torchvision", "resnet50", torchvision.models.resnet50, {"type": "ResNet", "depth": 50}),
    ("torchvision", "mobilenet_v2", torchvision.models.mobilenet_v2,
     {"type": "MobileNetV2", "widen_factor": 1.0}),
    ("timm", "resnet18", lambda: timm.create_model("resnet18"), {"type": "ResNet", "depth": 18}),
    ("timm", "resnet50d", lambda: timm.create_model("resnet50d"),
     {"type": "ResNetV1d", "depth": 50}),
    ("timm", "resnet50c.gluon_in1k", lambda: timm.create_model("resnet50c"),
     {"type": "ResNetV1c", "depth": 50}),
    ("timm", "mobilenetv2_100", lambda: timm.create_model("mobilenetv2_100"),
     {"type": "MobileNetV2", "widen_factor": 1.0}),
    ("timm", "mobilenetv2_050", lambda: timm.create_model("mobilenetv2_050"),
     {"type": "MobileNetV2", "widen_factor": 0.5}),
]


@pytest.mark.parametrize(("source", "arch", "make", "backbone"), CASES, ids=[c[1] for c in CASES])
def test_logit_parity_after_conversion(
    source: str, arch: str, make: Callable[[], nn.Module], backbone: dict[str, object]
) -> None:
    torch.manual_seed(0)
    reference = randomise_batchnorm(make())
    family, converter = find_converter(source, arch)
    assert family in ("resnet", "mobilenet_v2")
    converted = converter.convert(reference.state_dict(), source=source, arch=arch)
    assert converter.backbone_spec(source, arch) == backbone
    assert_parity(reference, converted, Classifier(backbone))


def test_converted_file_loads_through_a_pretrained_init_rule(tmp_path) -> None:
    """The user path: convert-weights, then a spec whose model has a Pretrained rule."""
    pytest.importorskip("pretrain_builtins.models.classifier")
    import pretrain

    torch.manual_seed(0)
    reference = randomise_batchnorm(torchvision.models.resnet18())
    src, dst = tmp_path / "resnet18.pth", tmp_path / "resnet18.safetensors"
    torch.save(reference.state_dict(), src)
    convert_file(src, dst, source="torchvision", arch="resnet18")
    model = pretrain.build_model({
        "model": {
            "type": "ImageClassifier",
            "mean": None,
            "std": None,
            "backbone": {"type": "ResNet", "depth": 18},
            "neck": {"type": "GlobalAveragePooling"},
            "head": {"type": "LinearClsHead", "num_classes": 1000, "in_channels": 512},
            "init": [{"type": "Pretrained", "checkpoint": str(dst)}],
        }
    }).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        # zero_init_residual must not have zeroed the loaded last-BN weights.
        assert (model(x) - reference(x)).abs().max().item() <= TOLERANCE


def test_converters_pass_tensors_through_without_copying() -> None:
    state = torchvision.models.resnet18().state_dict()
    converted = resnet_converter.convert(state, source="torchvision", arch="resnet18")
    assert converted["backbone.conv1.weight"] is state["conv1.weight"]
    assert converted["head.fc.bias"] is state["fc.bias"]
    assert len(converted) == len(state)


def test_unknown_keys_are_named() -> None:
    state = torchvision.models.resnet18().state_dict()
    state["extra.thing"] = torch.zeros(1)
    with pytest.raises(WeightConversionError, match=r"1 key\(s\).*extra\.thing") as info:
        resnet_converter.convert(state, source="torchvision", arch="resnet18")
    assert "--arch resnet18" in str(info.value)


def test_wrong_family_lists_foreign_keys() -> None:
    state = torchvision.models.mobilenet_v2().state_dict()
    with pytest.raises(WeightConversionError, match="features.0.0.weight"):
        resnet_converter.convert(state, source="torchvision", arch="resnet50")


def test_timm_mobilenet_state_dict_is_not_torchvision() -> None:
    state = timm.create_model("mobilenetv2_100").state_dict()
    with pytest.raises(WeightConversionError, match="conv_stem.weight"):
        mobilenet_converter.convert(state, source="torchvision", arch="mobilenet_v2")


@pytest.mark.parametrize(
    ("converter", "source", "arch"),
    [
        (resnet_converter, "torchvision", "resnet50d"),  # torchvision has no V1d
        (resnet_converter, "torchvision", "resnet200"),
        (resnet_converter, "timm", "resnext50_32x4d"),
        (mobilenet_converter, "torchvision", "mobilenetv2_100"),
        (mobilenet_converter, "timm", "mobilenetv2_110d"),  # depth multiplier: not our layout
    ],
)
def test_unsupported_arch(converter, source: str, arch: str) -> None:
    with pytest.raises(WeightConversionError, match="Supported"):
        converter.convert({}, source=source, arch=arch)


@pytest.mark.parametrize(
    ("source", "arch", "family"),
    [("torchvision", "resnet50", "resnet"), ("timm", "resnet50d.a1_in1k", "resnet"),
     ("torchvision", "mobilenet_v2", "mobilenet_v2"), ("timm", "mobilenetv2_100", "mobilenet_v2"),
     ("torchvision", "vit_b_16", "vit"), ("timm", "vit_base_patch16_224.mae", "vit")],
)
def test_registered_converters_declare_their_architectures(source: str, arch: str, family: str) -> None:
    assert find_converter(source, arch)[0] == family


def test_no_converter_for_an_architecture_lists_what_exists() -> None:
    with pytest.raises(PretrainError, match="no installed weight converter handles timm arch 'nonexistent_net'") as info:
        find_converter("timm", "nonexistent_net")
    assert "resnet (torchvision, timm)" in str(info.value.hint)
    with pytest.raises(PretrainError, match="known sources"):
        find_converter("keras", "resnet50")
    with pytest.raises(PretrainError, match="did you mean 'resnet'"):
        find_converter("torchvision", "resnet50", family="resnett")


# ----------------------------------------------------------------------------- files and CLI


def test_convert_file_from_pth_checkpoint(tmp_path) -> None:
    reference = torchvision.models.resnet18()
    src = tmp_path / "resnet18.pth"
    # A training checkpoint: weights nested under "state_dict" with DDP's "module." prefix.
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}, "epoch": 3},
        src,
    )
    dst = tmp_path / "out" / "resnet18.safetensors"
    summary = convert_file(src, dst, source="torchvision", arch="resnet18")
    assert summary["family"] == "resnet"
    assert summary["tensors_out"] == summary["tensors_in"] == 122
    assert summary["groups"] == {"backbone": 120, "head": 2}
    assert summary["backbone"] == {"type": "ResNet", "depth": 18}
    assert summary["head"] == {"num_classes": 1000, "in_channels": 512}
    loaded = load_file(str(dst))
    torch.testing.assert_close(loaded["backbone.layer4.1.bn2.running_var"],
                               reference.state_dict()["layer4.1.bn2.running_var"])
    with pytest.raises(PretrainError, match="already exists"):
        convert_file(src, dst, source="torchvision", arch="resnet18")
    convert_file(src, dst, source="torchvision", arch="resnet18", overwrite=True)


def test_convert_file_from_safetensors(tmp_path) -> None:
    src = tmp_path / "mnv2.safetensors"
    save_file(timm.create_model("mobilenetv2_100").state_dict(), str(src))
    dst = tmp_path / "ours.safetensors"
    summary = convert_file(src, dst, source="timm", arch="mobilenetv2_100")
    assert summary["backbone"] == {"type": "MobileNetV2", "widen_factor": 1.0}
    Classifier({"type": "MobileNetV2"}).load_state_dict(load_file(str(dst)), strict=True)


def test_convert_file_checks_the_backbone_fits(tmp_path) -> None:
    src = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), src)
    with pytest.raises(PretrainError, match="do not fit backbone.*unexpected: backbone.layer1.2"):
        convert_file(src, tmp_path / "x.safetensors", source="torchvision", arch="resnet18")
    truncated = torchvision.models.resnet18().state_dict()
    del truncated["layer3.0.conv1.weight"]
    torch.save(truncated, src)
    with pytest.raises(PretrainError, match="missing: backbone.layer3.0.conv1.weight"):
        convert_file(src, tmp_path / "x.safetensors", source="torchvision", arch="resnet18")
    assert not (tmp_path / "x.safetensors").exists()


def test_load_state_dict_never_unpickles_objects(tmp_path) -> None:
    src = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(1), "config": nn.ReLU()}, src)
    with pytest.raises(PretrainError, match="never unpickles"):
        load_state_dict(src)
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(PretrainError, match="unknown weight file type"):
        load_state_dict(tmp_path / "weights.npz")
    with pytest.raises(PretrainError, match="no such file"):
        load_state_dict(tmp_path / "missing.pth")


def test_cli_convert_weights(tmp_path, capsys) -> None:
    from pretrain.cli._main import run_cli

    src = tmp_path / "mnv2.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), src)
    dst = tmp_path / "mnv2.safetensors"
    code = run_cli(["convert-weights", str(src), str(dst), "--from", "torchvision",
                    "--arch", "mobilenet_v2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "backbone.*" in out and "312" in out
    assert 'type = "MobileNetV2"' in out and "in_channels = 1280" in out
    assert dst.is_file()
    code = run_cli(["convert-weights", str(src), str(tmp_path / "y.safetensors"), "--from",
                    "torchvision", "--arch", "notanet_tiny"])
    assert code == 1
    err = capsys.readouterr().err
    assert "no installed weight converter handles torchvision arch 'notanet_tiny'" in err
    assert "pretrain describe" in err
