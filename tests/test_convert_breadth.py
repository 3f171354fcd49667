"""Weight conversion for the new families: torchvision/timm → our classifier, logits compared.

Reference models are built locally with random weights (never downloaded); every
normalisation's statistics and affine parameters, layer scales and GRN parameters are
randomised so that a wrong mapping of any tensor changes the logits. Logits are
compared at 224×224 and at a non-square size (the ViTs, whose timm position-embedding
resizing differs from MMPretrain's, at their native size only).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import pretrain
from pretrain.assembly.assemble import build_from_spec
from pretrain.cli._convert import convert_file, find_converter
from pretrain_builtins.converters import WeightConversionError
from pretrain_builtins.converters.mobilenet import v3_head_spec

timm = pytest.importorskip("timm")

TOLERANCE = 1e-4
SIZES = ((224, 224), (200, 168))


def smooth_images(n: int, size: tuple[int, int]) -> torch.Tensor:
    """Smooth random images: i.i.d. pixel noise would average out in global pooling."""
    return 2.0 * F.interpolate(torch.randn(n, 3, 7, 7), size=size, mode="bilinear", align_corners=False)


def randomise(model: nn.Module) -> nn.Module:
    """Realistic but random weights: every BN/LN/scale tensor differs from its default.

    BatchNorm statistics are first measured on random images (so that a deep random
    network neither explodes nor collapses to a constant), then perturbed; affine
    parameters, layer scales, GRN parameters and Linear weights are random too.
    """
    torch.manual_seed(0)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):  # O(1) logits (some libraries init classifiers at ~0)
                m.weight.normal_(0.0, m.in_features**-0.5)
            elif isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "layer_scale", "grn.weight", "grn.bias", "dist_token", "cls_token")):
                p.normal_(0.0, 0.5)
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        if norms:
            model.train()
            model(smooth_images(8, (64, 64)))
        for m in norms:  # small perturbations: distinct per channel, no blow-up over depth
            m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.9, 1.1))
            m.running_mean.add_(0.05 * m.running_var.sqrt() * torch.randn_like(m.running_mean))
            m.weight.mul_(torch.empty_like(m.weight).uniform_(0.9, 1.1))
            m.bias.add_(0.05 * torch.randn_like(m.bias))
    return model.eval()


class Classifier(nn.Module):
    """backbone → [GAP] → head from real components, with ImageClassifier's attribute names."""

    def __init__(self, backbone: dict[str, object], head: dict[str, object], pool: bool) -> None:
        super().__init__()
        self.backbone = build_from_spec("backbone", backbone)
        self.neck = build_from_spec("neck", {"type": "GlobalAveragePooling"}) if pool else None
        self.head = build_from_spec("head", head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        return self.head(self.neck(feats) if self.neck is not None else feats)  # (B, num_classes)


def linear_head(in_channels: int) -> dict[str, object]:
    return {"type": "LinearClsHead", "num_classes": 1000, "in_channels": in_channels}


def assert_parity(reference: nn.Module, ours: nn.Module, sizes=SIZES, dtype=torch.float32) -> float:
    reference, ours = reference.to(dtype), ours.to(dtype)
    worst = 0.0
    for size in sizes:
        x = smooth_images(2, size).to(dtype)
        with torch.no_grad():
            expected, got = reference(x), ours(x)
        # Not a degenerate comparison: logits vary over classes and between the two images.
        assert expected.std() > 0.05 and (expected[0] - expected[1]).abs().max() > 0.02
        worst = max(worst, (got - expected).abs().max().item())
    assert worst <= TOLERANCE, worst
    return worst


TV = torchvision.models
CASES: list[tuple[str, str, Callable[[], nn.Module], Callable[[dict], dict], bool, str]] = [
    ("torchvision", "convnext_tiny", TV.convnext_tiny, lambda b: linear_head(768), False, "convnext"),
    ("torchvision", "efficientnet_b0", TV.efficientnet_b0, lambda b: linear_head(1280), True, "efficientnet"),
    ("torchvision", "efficientnet_v2_s", TV.efficientnet_v2_s, lambda b: linear_head(1280), True, "efficientnet_v2"),
    ("torchvision", "regnet_x_400mf", TV.regnet_x_400mf, lambda b: linear_head(400), True, "regnet"),
    ("torchvision", "resnext50_32x4d", TV.resnext50_32x4d, lambda b: linear_head(2048), True, "resnext"),
    ("torchvision", "wide_resnet50_2", TV.wide_resnet50_2, lambda b: linear_head(2048), True, "resnext"),
    ("torchvision", "mobilenet_v3_large", TV.mobilenet_v3_large, lambda b: v3_head_spec("large"), True,
     "mobilenet_v3"),
    ("torchvision", "mobilenet_v3_small", TV.mobilenet_v3_small, lambda b: v3_head_spec("small"), True,
     "mobilenet_v3"),
    ("timm", "convnext_atto", lambda: timm.create_model("convnext_atto"), lambda b: linear_head(320), False,
     "convnext"),
    ("timm", "convnextv2_nano.fcmae_ft_in1k", lambda: timm.create_model("convnextv2_nano"),
     lambda b: linear_head(640), False, "convnext"),
    ("timm", "tf_efficientnet_b0", lambda: timm.create_model("tf_efficientnet_b0"), lambda b: linear_head(1280),
     True, "efficientnet"),
    ("timm", "efficientnet_es", lambda: timm.create_model("efficientnet_es"), lambda b: linear_head(1280), True,
     "efficientnet"),
    ("timm", "tf_efficientnetv2_b0", lambda: timm.create_model("tf_efficientnetv2_b0"),
     lambda b: linear_head(1280), True, "efficientnet_v2"),
    ("timm", "regnetx_004", lambda: timm.create_model("regnetx_004"), lambda b: linear_head(384), True, "regnet"),
    ("timm", "resnext50_32x4d", lambda: timm.create_model("resnext50_32x4d"), lambda b: linear_head(2048), True,
     "resnext"),
    ("timm", "seresnet50", lambda: timm.create_model("seresnet50"), lambda b: linear_head(2048), True, "seresnet"),
    ("timm", "seresnext50_32x4d", lambda: timm.create_model("seresnext50_32x4d"), lambda b: linear_head(2048),
     True, "seresnet"),
    ("timm", "mobilenetv3_large_100", lambda: timm.create_model("mobilenetv3_large_100"),
     lambda b: v3_head_spec("large"), True, "mobilenet_v3"),
    ("timm", "mobilenetv3_small_100", lambda: timm.create_model("mobilenetv3_small_100"),
     lambda b: v3_head_spec("small"), True, "mobilenet_v3"),
]


@pytest.mark.parametrize(("source", "arch", "make", "head", "pool", "family"), CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_logit_parity_after_conversion(source, arch, make, head, pool, family) -> None:
    torch.manual_seed(0)
    reference = randomise(make())
    found, converter = find_converter(source, arch)
    assert found == family
    backbone = converter.backbone_spec(source, arch)
    converted = converter.convert(reference.state_dict(), source=source, arch=arch)
    ours = Classifier(backbone, head(backbone), pool)
    ours.load_state_dict(converted, strict=True)
    # timm computes hard-swish/hard-sigmoid as x * relu6(x + 3) / 6, torch's fused ops round
    # differently (2e-5..6e-5 apart after 16 blocks in float32): compare those in float64.
    dtype = torch.float64 if arch.startswith("mobilenetv3") else torch.float32
    assert_parity(reference, ours.eval(), dtype=dtype)


@pytest.mark.parametrize(
    ("arch", "backbone", "head"),
    [
        ("deit_tiny_distilled_patch16_224",
         {"type": "DistilledVisionTransformer", "arch": "deit-tiny", "img_size": 224},
         {"type": "DeiTClsHead", "num_classes": 1000, "in_channels": 192}),
        ("deit3_small_patch16_224.fb_in1k", {"type": "DeiT3", "arch": "small", "patch_size": 16, "img_size": 224},
         {"type": "VisionTransformerClsHead", "num_classes": 1000, "in_channels": 384}),
    ],
    ids=["deit-distilled", "deit3"],
)
def test_deit_logit_parity(arch: str, backbone: dict[str, object], head: dict[str, object]) -> None:
    torch.manual_seed(0)
    reference = randomise(timm.create_model(arch.split(".", maxsplit=1)[0]))
    found, converter = find_converter("timm", arch)
    assert found == "deit" and converter.backbone_spec("timm", arch) == backbone
    ours = Classifier(backbone, head, pool=False)
    ours.load_state_dict(converter.convert(reference.state_dict(), source="timm", arch=arch), strict=True)
    assert_parity(reference, ours.eval(), sizes=((224, 224),))


def test_backbone_specs_name_padding_epsilon_and_mlp_layout() -> None:
    specs = {
        ("torchvision", "efficientnet_b3"): {"type": "EfficientNet", "arch": "b3", "conv_cfg": {"type": "Conv2d"},
                                             "norm_cfg": {"type": "BN", "eps": 1e-5}},
        ("timm", "tf_efficientnet_b3.ns_jft_in1k"): {"type": "EfficientNet", "arch": "b3"},
        ("torchvision", "efficientnet_v2_l"): {"type": "EfficientNetV2", "arch": "l", "conv_cfg": {"type": "Conv2d"}},
        ("timm", "convnext_pico"): {"type": "ConvNeXt", "arch": "pico", "linear_pw_conv": False},
        ("timm", "convnextv2_base"): {"type": "ConvNeXt", "arch": "base", "use_grn": True,
                                      "layer_scale_init_value": 0.0},
        ("timm", "regnetx_032"): {"type": "RegNet", "arch": "regnetx_3.2gf"},
        ("torchvision", "resnext101_64x4d"): {"type": "ResNeXt", "depth": 101, "groups": 64, "width_per_group": 4},
        ("timm", "seresnext101_32x8d"): {"type": "SEResNeXt", "depth": 101, "groups": 32, "width_per_group": 8},
        ("timm", "mobilenetv3_large_100"): {"type": "MobileNetV3", "arch": "large",
                                           "norm_cfg": {"type": "BN", "eps": 1e-5, "momentum": 0.1}},
        ("timm", "deit3_base_patch16_384"): {"type": "DeiT3", "arch": "base", "patch_size": 16, "img_size": 384},
    }
    for (source, arch), expected in specs.items():
        assert find_converter(source, arch)[1].backbone_spec(source, arch) == expected, arch


@pytest.mark.parametrize(
    ("source", "arch"),
    [("torchvision", "convnext_xlarge"), ("timm", "convnext_tiny_hnf"), ("timm", "efficientnet_el"),
     ("timm", "efficientnetv2_rw_s"), ("torchvision", "regnet_y_400mf"), ("timm", "resnext50d_32x4d"),
     ("torchvision", "seresnet50"), ("timm", "deit3_small_patch16_224_in21k"), ("timm", "tf_mobilenetv3_large_100")],
)
def test_unsupported_architectures_find_no_converter(source: str, arch: str) -> None:
    with pytest.raises(pretrain.PretrainError, match="no installed weight converter handles"):
        find_converter(source, arch)


def test_block_structure_mismatch_is_named() -> None:
    state = torchvision.models.efficientnet_b1().state_dict()
    _, converter = find_converter("torchvision", "efficientnet_b0")
    with pytest.raises(WeightConversionError, match="blocks, the matching backbone has"):
        converter.convert(state, source="torchvision", arch="efficientnet_b0")


def test_converted_file_loads_through_a_pretrained_init_rule(tmp_path) -> None:
    """The user path for a new family: convert-weights, then a spec with a Pretrained rule."""
    reference = randomise(torchvision.models.efficientnet_b0())
    src, dst = tmp_path / "b0.pth", tmp_path / "b0.safetensors"
    torch.save(reference.state_dict(), src)
    summary = convert_file(src, dst, source="torchvision", arch="efficientnet_b0")
    assert summary["family"] == "efficientnet"
    assert summary["head"] == {"num_classes": 1000, "in_channels": 1280}
    model = pretrain.build_model({"model": {
        "type": "ImageClassifier", "mean": None, "std": None,
        "backbone": summary["backbone"],
        "neck": {"type": "GlobalAveragePooling"},
        "head": {"type": "LinearClsHead", "num_classes": 1000, "in_channels": 1280},
        "init": [{"type": "Pretrained", "checkpoint": str(dst)}],
    }}).eval()
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= TOLERANCE


def test_cli_convert_weights_mobilenet_v3(tmp_path, capsys) -> None:
    from pretrain.cli._main import run_cli

    src = tmp_path / "mnv3.pth"
    torch.save(torchvision.models.mobilenet_v3_large().state_dict(), src)
    code = run_cli(["convert-weights", str(src), str(tmp_path / "mnv3.safetensors"), "--from", "torchvision",
                    "--arch", "mobilenet_v3_large"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert 'type = "MobileNetV3"' in out and 'arch = "large"' in out
