"""Backbone breadth: ConvNeXt, EfficientNet(V2), RegNet, ResNeXt, SE-ResNet(X), DeiT, DeiT III.

Parameter counts are checked against torchvision/timm (built locally, no weights; on the
meta device where the library allows it) and MMPretrain's published figures; then shapes
per ``out_indices``, spec validation, freezing, checkpointing, the shared layers, the
meta-device forward that ``pretrain validate`` relies on, and the DeiT head.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pretrain import SpecError
from pretrain.assembly.assemble import build_from_spec
from pretrain_builtins.backbones.convnext import ConvNeXt
from pretrain_builtins.backbones.deit import DeiT3, DistilledVisionTransformer
from pretrain_builtins.backbones.efficientnet import EfficientNet
from pretrain_builtins.backbones.efficientnet_v2 import EfficientNetV2
from pretrain_builtins.backbones.mobilenet_v3 import MobileNetV3
from pretrain_builtins.backbones.regnet import RegNet, regnet_stages
from pretrain_builtins.backbones.resnet import ResNet
from pretrain_builtins.backbones.resnext import ResNeXt
from pretrain_builtins.backbones.seresnet import SEResNet, SEResNeXt
from pretrain_builtins.heads.deit_head import DeiTClsHead
from pretrain_builtins.layers import GRN, Conv2dAdaptivePadding, DropPath, LayerNorm2d

TV_SYMMETRIC = {"conv_cfg": {"type": "Conv2d"}, "norm_cfg": {"type": "BN", "eps": 1e-5}}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def linear(in_channels: int, num_classes: int = 1000) -> int:
    return in_channels * num_classes + num_classes


def on_meta(make: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return make()


# ----------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        (lambda: ConvNeXt(arch="tiny"), torchvision.models.convnext_tiny, 28_589_128),
        (lambda: ConvNeXt(arch="base"), torchvision.models.convnext_base, 88_591_464),
        (lambda: EfficientNet(arch="b0", **TV_SYMMETRIC), torchvision.models.efficientnet_b0, 5_288_548),
        (lambda: EfficientNet(arch="b4", **TV_SYMMETRIC), torchvision.models.efficientnet_b4, 19_341_616),
        (lambda: EfficientNet(arch="b7", **TV_SYMMETRIC), torchvision.models.efficientnet_b7, 66_347_960),
        (lambda: EfficientNetV2(arch="s"), torchvision.models.efficientnet_v2_s, 21_458_488),
        (lambda: EfficientNetV2(arch="m"), torchvision.models.efficientnet_v2_m, 54_139_356),
        (lambda: ResNeXt(depth=50), torchvision.models.resnext50_32x4d, 25_028_904),
        (lambda: ResNeXt(depth=101, width_per_group=8), torchvision.models.resnext101_32x8d, 88_791_336),
        (lambda: ResNeXt(depth=101, groups=64), torchvision.models.resnext101_64x4d, 83_455_272),
        (lambda: ResNet(depth=50, base_channels=128, expansion=2), torchvision.models.wide_resnet50_2, 68_883_240),
    ],
    ids=["convnext-t", "convnext-b", "effnet-b0", "effnet-b4", "effnet-b7", "effnetv2-s", "effnetv2-m",
         "resnext50-32x4d", "resnext101-32x8d", "resnext101-64x4d", "wide-resnet50-2"],
)
def test_classifier_params_match_torchvision(ours, theirs, expected: int) -> None:
    backbone = on_meta(ours)
    total = n_params(backbone) + linear(backbone.feat_dim)
    assert total == expected
    assert total == n_params(on_meta(theirs))


def test_mobilenet_v3_large_with_mmpretrain_stacked_head_matches_torchvision() -> None:
    with torch.device("meta"):
        backbone = MobileNetV3(arch="large")
        head = build_from_spec("head", {"type": "StackedLinearClsHead", "num_classes": 1000, "in_channels": 960,
                                        "mid_channels": [1280], "dropout_rate": 0.2, "act": "HSwish"})
        tv = torchvision.models.mobilenet_v3_large()
    assert n_params(backbone) + n_params(head) == 5_483_032 == n_params(tv)


def test_regnet_mmpretrain_presets_match_pycls_and_timm() -> None:
    expected = {  # with GAP + a 1000-class linear head; = timm's regnetx_{004..120}
        "regnetx_400mf": 5_157_512, "regnetx_800mf": 7_259_656, "regnetx_1.6gf": 9_190_136,
        "regnetx_3.2gf": 15_296_552, "regnetx_4.0gf": 22_118_248, "regnetx_6.4gf": 26_209_256,
        "regnetx_8.0gf": 39_572_648, "regnetx_12gf": 46_106_056,
    }
    for arch, count in expected.items():
        backbone = on_meta(lambda a=arch: RegNet(arch=a))
        assert n_params(backbone) + linear(backbone.feat_dim) == count, arch
    assert n_params(timm.create_model("regnetx_004")) == expected["regnetx_400mf"]
    # MMPretrain's preset: pycls widths 32-64-160-384 (its metafile: 5.16 M parameters).
    assert regnet_stages("regnetx_400mf")[:2] == ([32, 64, 160, 384], [1, 2, 7, 12])


def test_regnet_torchvision_presets_match_torchvision() -> None:
    expected = {"regnet_x_400mf": 5_495_976, "regnet_x_800mf": 7_259_656, "regnet_x_1_6gf": 9_190_136,
                "regnet_x_3_2gf": 15_296_552, "regnet_x_8gf": 39_572_648, "regnet_x_16gf": 54_278_536,
                "regnet_x_32gf": 107_811_560}
    for arch, count in expected.items():
        backbone = on_meta(lambda a=arch: RegNet(arch=a))
        assert n_params(backbone) + linear(backbone.feat_dim) == count, arch
    assert n_params(torchvision.models.regnet_x_400mf()) == expected["regnet_x_400mf"]


@pytest.mark.parametrize(
    ("ours", "timm_name", "expected"),
    [
        (lambda: SEResNet(depth=50), "seresnet50", 28_088_024),
        (lambda: SEResNeXt(depth=50), "seresnext50_32x4d", 27_559_896),
        (lambda: EfficientNet(arch="es"), "tf_efficientnet_es", 5_438_392),
        (lambda: EfficientNetV2(arch="b0"), "tf_efficientnetv2_b0", 7_139_704),
        (lambda: ConvNeXt(arch="atto", use_grn=True, layer_scale_init_value=0.0), "convnextv2_atto", 3_708_400),
    ],
    ids=["seresnet50", "seresnext50", "effnet-es", "effnetv2-b0", "convnextv2-atto"],
)
def test_classifier_params_match_timm(ours, timm_name: str, expected: int) -> None:
    backbone = on_meta(ours)
    total = n_params(backbone) + linear(backbone.feat_dim)
    assert total == expected == n_params(timm.create_model(timm_name))


def test_efficientnet_large_archs_match_timm_counts() -> None:
    # timm tf_efficientnet_{b8,l2} counts (too big to build here twice).
    for arch, count in (("b8", 87_413_142), ("l2", 480_309_308), ("em", 6_899_496)):
        backbone = on_meta(lambda a=arch: EfficientNet(arch=a))
        assert n_params(backbone) + linear(backbone.feat_dim) == count, arch


def test_deit_params_match_timm() -> None:
    with torch.device("meta"):
        distilled = DistilledVisionTransformer(arch="deit-tiny")
        head = DeiTClsHead(num_classes=1000, in_channels=192)
        deit3 = DeiT3(arch="s")
    assert n_params(distilled) + n_params(head) == 5_910_800
    assert n_params(deit3) + linear(384) == 22_059_496
    assert n_params(timm.create_model("deit3_small_patch16_224")) == 22_059_496
    assert deit3.pos_embed.shape == (1, 196, 384)  # no cls slot
    assert distilled.pos_embed.shape == (1, 198, 192)  # cls + distillation slots


# ----------------------------------------------------------------------------- shapes


SHAPES = [
    (lambda: ConvNeXt(arch="atto", out_indices=(0, 1, 2, 3), gap_before_final_norm=False), (64, 48),
     [(40, 16, 12), (80, 8, 6), (160, 4, 3), (320, 2, 1)]),
    (lambda: ConvNeXt(arch="atto", out_indices=(-3, -1)), (64, 64), [(80,), (320,)]),
    (lambda: EfficientNet(arch="b0", out_indices=tuple(range(7))), (64, 64),
     [(32, 32, 32), (16, 32, 32), (24, 16, 16), (40, 8, 8), (112, 4, 4), (320, 2, 2), (1280, 2, 2)]),
    (lambda: EfficientNet(arch="b0", out_indices=(6,)), (67, 45), [(1280, 3, 2)]),
    (lambda: EfficientNet(arch="es", out_indices=(1, 4)), (64, 64), [(24, 32, 32), (144, 4, 4)]),
    (lambda: EfficientNetV2(arch="b0", out_indices=(0, 3, -2, -1)), (64, 64),
     [(32, 32, 32), (48, 8, 8), (192, 2, 2), (1280, 2, 2)]),
    (lambda: RegNet(arch="regnetx_400mf", out_indices=(0, 1, 2, 3)), (64, 64),
     [(32, 16, 16), (64, 8, 8), (160, 4, 4), (384, 2, 2)]),
    (lambda: ResNeXt(depth=50, out_indices=(1, 3)), (64, 64), [(512, 8, 8), (2048, 2, 2)]),
    (lambda: SEResNeXt(depth=50, out_indices=(0,)), (64, 64), [(256, 16, 16)]),
    (lambda: DistilledVisionTransformer(arch="deit-tiny", img_size=32, patch_size=8), (32, 32), [(2, 192)]),
    (lambda: DistilledVisionTransformer(arch="deit-tiny", img_size=32, patch_size=8, out_type="featmap"),
     (32, 48), [(192, 4, 6)]),
    (lambda: DeiT3(arch="s", img_size=32, patch_size=8, out_type="raw"), (48, 32), [(25, 384)]),
]


@pytest.mark.parametrize(("make", "size", "expected"), SHAPES, ids=[
    "convnext-maps", "convnext-gap-negative", "effnet-b0-all", "effnet-b0-odd-size", "effnet-es",
    "effnetv2-b0", "regnet", "resnext", "seresnext", "deit-distilled-tokens", "deit-distilled-featmap",
    "deit3-raw"])
def test_output_shapes(make, size: tuple[int, int], expected: list[tuple[int, ...]]) -> None:
    backbone = make().eval()
    with torch.no_grad():
        outs = backbone(torch.randn(2, 3, *size))
    assert isinstance(outs, tuple)
    assert [tuple(o.shape[1:]) for o in outs] == expected
    if hasattr(backbone, "out_channels"):
        assert backbone.out_channels == tuple(e[0] for e in expected)


@pytest.mark.parametrize("spec", [
    {"type": "ConvNeXt", "arch": "tiny", "drop_path_rate": 0.1},
    {"type": "EfficientNet", "arch": "b3"},
    {"type": "EfficientNetV2", "arch": "m"},
    {"type": "RegNet", "arch": "regnetx_1.6gf"},
    {"type": "ResNeXt", "depth": 101, "with_cp": True},
    {"type": "SEResNeXt", "depth": 50},
    {"type": "DistilledVisionTransformer", "arch": "deit-small"},
    {"type": "DeiT3", "arch": "medium"},
], ids=lambda s: s["type"])
def test_backbones_build_and_run_on_meta(spec: dict[str, object]) -> None:
    """``pretrain validate`` builds on meta and runs a batch: no ``.item()`` anywhere."""
    with torch.device("meta"):
        backbone = build_from_spec("backbone", spec)
        outs = backbone(torch.empty(2, 3, 224, 160))
    assert all(o.is_meta for o in outs)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("spec", "loc", "words"),
    [
        ({"type": "ConvNeXt", "arch": "giant"}, "backbone.arch", "tiny"),
        ({"type": "ConvNeXt", "arch": {"depths": [1, 1], "channels": [8]}}, "backbone.arch", "same length"),
        ({"type": "ConvNeXt", "out_indices": [4]}, "backbone.out_indices", "-4..-1"),
        ({"type": "ConvNeXt", "out_indices": [3, 1]}, "backbone.out_indices", "increasing"),
        ({"type": "ConvNeXt", "out_indices": [-1, 3]}, "backbone.out_indices", "each once"),
        ({"type": "ConvNeXt", "frozen_stages": 5}, "backbone.frozen_stages", "0..4"),
        ({"type": "EfficientNet", "arch": "b9"}, "backbone.arch", "b8"),
        ({"type": "EfficientNet", "out_indices": [7]}, "backbone.out_indices", "0..6"),
        ({"type": "EfficientNet", "conv_cfg": {"type": "Conv3d"}}, "backbone.conv_cfg", "Conv2dAdaptivePadding"),
        ({"type": "EfficientNet", "norm_cfg": {"type": "BN", "epsilon": 1e-3}}, "backbone.norm_cfg", "epsilon"),
        ({"type": "EfficientNetV2", "arch": "s", "out_indices": [-9]}, "backbone.out_indices", "0..7"),
        ({"type": "EfficientNetV2", "arch": "m", "frozen_stages": 10}, "backbone.frozen_stages", "0..9"),
        ({"type": "RegNet"}, "backbone.arch", "required"),
        ({"type": "RegNet", "arch": "regnetx_400mf", "strides": [2, 2, 2]}, "backbone.strides", "one per stage"),
        ({"type": "RegNet", "arch": {"w0": 20, "wa": 24.0, "wm": 2.5, "group_w": 8, "depth": 6, "bot_mul": 1.0}},
         "backbone.arch", "multiple of 8"),
        ({"type": "ResNeXt", "depth": 18}, "backbone.depth", "50, 101 or 152"),
        ({"type": "SEResNet", "depth": 34}, "backbone.depth", "50, 101 or 152"),
        ({"type": "DistilledVisionTransformer", "with_cls_token": False}, "backbone.with_cls_token", "always"),
        ({"type": "DeiT3", "arch": "tiny"}, "backbone.arch", "medium"),
        ({"type": "DeiT3", "arch": "s", "out_indices": [12]}, "backbone.out_indices", "12 layers"),
    ],
)
def test_spec_validation_errors(spec: dict[str, object], loc: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        build_from_spec("backbone", spec)
    message = str(info.value)
    assert loc in message, message
    assert words in message, message


def test_direct_construction_raises_value_errors() -> None:
    with pytest.raises(ValueError, match="out_indices"):
        ConvNeXt(arch="atto", out_indices=(5,))
    with pytest.raises(ValueError, match="frozen_stages"):
        EfficientNet(arch="b0", frozen_stages=8)
    with pytest.raises(ValueError, match="with_cls_token"):
        DistilledVisionTransformer(arch="deit-tiny", with_cls_token=False)


def test_mmpretrain_style_config_tables_are_accepted() -> None:
    backbone = build_from_spec("backbone", {
        "type": "EfficientNet", "arch": "es", "conv_cfg": None, "act_cfg": {"type": "ReLU"},
        "norm_cfg": {"type": "BN", "eps": 1e-5, "momentum": 0.01},
    })
    bn = backbone.layers[0].bn
    assert (bn.eps, bn.momentum) == (1e-5, 0.01)
    assert isinstance(backbone.layers[0].activate, nn.ReLU)
    assert type(backbone.layers[0].conv) is nn.Conv2d


# ----------------------------------------------------------------------------- freezing, norm_eval, checkpointing


def _train_step(backbone: nn.Module, size: int = 32) -> None:
    backbone.train()
    out = backbone(torch.randn(2, 3, size, size))
    sum(o.float().sum() for o in out).backward()


@pytest.mark.parametrize(
    ("make", "frozen", "trainable"),
    [
        (lambda: ConvNeXt(arch={"depths": [1, 1, 1, 1], "channels": [8, 8, 16, 16]}, frozen_stages=2),
         ["downsample_layers.0", "stages.0", "downsample_layers.1", "stages.1"], ["stages.2", "norm3"]),
        (lambda: EfficientNet(arch="b0", frozen_stages=3), ["layers.0", "layers.2"], ["layers.3", "layers.6"]),
        (lambda: EfficientNetV2(arch="b0", frozen_stages=2), ["layers.0", "layers.1"], ["layers.2", "layers.7"]),
        (lambda: RegNet(arch="regnetx_400mf", frozen_stages=1), ["conv1", "bn1", "layer1"], ["layer2", "layer4"]),
    ],
    ids=["convnext", "efficientnet", "efficientnet_v2", "regnet"],
)
def test_frozen_stages_get_no_gradients_and_stay_in_eval(make, frozen: list[str], trainable: list[str]) -> None:
    backbone = make()
    _train_step(backbone)
    for name in frozen:
        module = backbone.get_submodule(name)
        assert not module.training, name
        assert all(not p.requires_grad and p.grad is None for p in module.parameters()), name
    for name in trainable:
        module = backbone.get_submodule(name)
        assert module.training, name
        assert all(p.grad is not None for p in module.parameters()), name


def test_norm_eval_keeps_batchnorm_statistics() -> None:
    backbone = EfficientNet(arch="es", norm_eval=True)
    before = backbone.layers[3][0].conv1.bn.running_mean.clone()
    _train_step(backbone)
    assert torch.equal(backbone.layers[3][0].conv1.bn.running_mean, before)
    assert backbone.layers[3][0].conv1.bn.weight.grad is not None


@pytest.mark.parametrize(
    "make",
    [
        lambda cp: ConvNeXt(arch={"depths": [1, 1, 2, 1], "channels": [8, 8, 16, 16]}, use_grn=True, with_cp=cp),
        lambda cp: EfficientNet(arch="es", with_cp=cp),
        lambda cp: EfficientNetV2(arch="b0", with_cp=cp),
    ],
    ids=["convnext", "efficientnet", "efficientnet_v2"],
)
def test_with_cp_gives_same_outputs_and_gradients(make) -> None:
    torch.manual_seed(0)
    plain, ckpt = make(False).eval(), make(True).eval()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    results = []
    for model in (plain, ckpt):
        inp = x.clone().requires_grad_(True)
        out = model(inp)[-1]
        out.square().mean().backward()
        results.append((out.detach(), inp.grad))
    for a, b in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(a, b)


def test_convnext_drop_path_rates_rise_linearly() -> None:
    backbone = ConvNeXt(arch="atto", drop_path_rate=0.2)
    rates = [blk.drop_path.drop_prob if isinstance(blk.drop_path, DropPath) else 0.0
             for stage in backbone.stages for blk in stage]
    assert rates == pytest.approx([0.2 * i / 11 for i in range(12)])


def test_convnext_layer_depth_matches_mmpretrain_rule() -> None:
    backbone = ConvNeXt(arch="small")
    assert backbone.get_layer_depth("backbone.downsample_layers.0.0.weight", "backbone.") == (0, 14)
    assert backbone.get_layer_depth("backbone.stages.1.2.gamma", "backbone.") == (2, 14)
    assert backbone.get_layer_depth("backbone.stages.2.7.norm.weight", "backbone.") == (5, 14)
    assert backbone.get_layer_depth("backbone.stages.3.0.gamma", "backbone.") == (12, 14)
    assert backbone.get_layer_depth("backbone.norm3.weight", "backbone.") == (13, 14)
    assert backbone.get_layer_depth("head.fc.weight", "backbone.") == (13, 14)


def test_default_inits() -> None:
    torch.manual_seed(0)
    convnext = build_from_spec("backbone", {"type": "ConvNeXt", "arch": "atto"})
    assert convnext.stages[2][0].pointwise_conv1.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.all(convnext.stages[2][0].pointwise_conv1.bias == 0)
    regnet = build_from_spec("backbone", {"type": "RegNet", "arch": "regnetx_400mf"})
    assert torch.all(regnet.layer2[0].bn3.weight == 0)  # zero_init_residual
    seresnet = build_from_spec("backbone", {"type": "SEResNet", "depth": 50})
    assert torch.all(seresnet.layer1[0].bn3.weight == 0)


# ----------------------------------------------------------------------------- shared layers


def test_adaptive_padding_is_tensorflow_same() -> None:
    torch.manual_seed(0)
    for stride, kernel, size in ((2, 3, (15, 16)), (2, 5, (32, 33)), (1, 3, (9, 9))):
        ours = Conv2dAdaptivePadding(4, 6, kernel, stride)
        theirs = timm.layers.Conv2dSame(4, 6, kernel, stride)
        theirs.load_state_dict(ours.state_dict())
        x = torch.randn(1, 4, *size)
        torch.testing.assert_close(ours(x), theirs(x))
        assert ours(x).shape[-2:] == tuple(-(-s // stride) for s in size)


def test_layernorm2d_and_grn() -> None:
    norm = LayerNorm2d(8)
    nn.init.normal_(norm.weight)
    x = torch.randn(2, 8, 5, 3)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (8,), norm.weight, norm.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), expected)
    torch.testing.assert_close(norm(x.permute(0, 2, 3, 1), data_format="channel_last"), expected.permute(0, 2, 3, 1))
    grn = GRN(8)
    torch.testing.assert_close(grn(x), x)  # identity at init (gamma = beta = 0)
    nn.init.normal_(grn.gamma)
    nn.init.normal_(grn.beta)
    torch.testing.assert_close(grn(x.permute(0, 2, 3, 1), data_format="channel_last"), grn(x).permute(0, 2, 3, 1))


# ----------------------------------------------------------------------------- DeiT


def test_deit3_uses_both_layer_norms_and_layer_scale() -> None:
    """MMPretrain's DeiT3 layer applies ln1 twice; ours normalises the MLP input with ln2."""
    torch.manual_seed(0)
    model = DeiT3(arch={"embed_dims": 16, "num_layers": 1, "num_heads": 2, "feedforward_channels": 32},
                  img_size=16, patch_size=8).eval()
    assert model.layers[0].attn.gamma1.weight.eq(1e-5).all()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        model.layers[0].attn.gamma1.weight.fill_(1.0)
        model.layers[0].ffn.gamma2.weight.fill_(1.0)
        before = model(x)[0].clone()
        model.layers[0].ln2.weight.mul_(3.0)
        assert not torch.allclose(model(x)[0], before)
    assert DeiT3(arch="b", use_layer_scale=False).layers[0].attn.gamma1.__class__ is nn.Identity


def test_distilled_pos_embed_is_resized_on_load() -> None:
    small = DistilledVisionTransformer(arch="deit-tiny", img_size=32, patch_size=8)
    big = DistilledVisionTransformer(arch="deit-tiny", img_size=48, patch_size=8)
    big.load_state_dict(small.state_dict())
    torch.testing.assert_close(big.pos_embed[:, :2], small.pos_embed[:, :2])  # both tokens kept
    assert big.pos_embed.shape == (1, 2 + 36, 192)


def test_deit_head_averages_two_classifiers_and_trains_both() -> None:
    torch.manual_seed(0)
    head = build_from_spec("head", {"type": "DeiTClsHead", "num_classes": 4, "in_channels": 8, "cal_acc": True})
    for layer in (head.layers.head, head.layers.head_dist):
        nn.init.normal_(layer.weight)
    feats = (torch.randn(3, 2, 8),)
    targets = torch.tensor([0, 1, 3])
    cls_logits = head.layers.head(feats[0][:, 0])
    dist_logits = head.layers.head_dist(feats[0][:, 1])
    torch.testing.assert_close(head(feats), (cls_logits + dist_logits) / 2)
    losses = head.loss(feats, targets)
    expected = (F.cross_entropy(cls_logits, targets) + F.cross_entropy(dist_logits, targets)) / 2
    torch.testing.assert_close(losses["loss"], expected)
    assert "accuracy/top1" in losses
    losses["loss"].backward()
    assert head.layers.head.weight.grad is not None and head.layers.head_dist.weight.grad is not None
    with pytest.raises(Exception, match=r"\(B, 2, C\)"):
        head((torch.randn(3, 8),))
