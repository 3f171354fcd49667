"""CNN backbones: ResNet family, ResNet_CIFAR, MobileNetV2, MobileNetV3.

Parameter counts are checked against torchvision (built locally, no weights),
shapes per ``out_indices``, spec validation, freezing, ``norm_eval``,
activation checkpointing, stochastic depth, init and layer-wise LR decay ids.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from pretrain import SpecError
from pretrain.assembly.assemble import build_from_spec
from pretrain.registry.schema import component_schema
from pretrain.testing import parametrize_with_checks
from pretrain_builtins.backbones.mobilenet_v2 import MobileNetV2
from pretrain_builtins.backbones.mobilenet_v3 import MobileNetV3
from pretrain_builtins.backbones.resnet import ResNet, ResNetV1c, ResNetV1d
from pretrain_builtins.backbones.resnet_cifar import ResNet_CIFAR
from pretrain_builtins.layers import DropPath, make_divisible


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def linear_params(in_channels: int, num_classes: int) -> int:
    return in_channels * num_classes + num_classes


# ----------------------------------------------------------------------------- conformance kit


@parametrize_with_checks(
    ["ResNet", "ResNetV1c", "ResNetV1d", "ResNet_CIFAR", "MobileNetV2", "MobileNetV3"]
)
def test_conformance(check) -> None:
    check()


# ----------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(
    ("depth", "expected"), [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032)]
)
def test_resnet_classifier_params_match_torchvision(depth: int, expected: int) -> None:
    backbone = ResNet(depth=depth)
    total = n_params(backbone) + linear_params(backbone.feat_dim, 1000)
    assert total == expected
    assert total == n_params(getattr(torchvision.models, f"resnet{depth}")())


def test_resnet_state_dict_names_match_torchvision() -> None:
    ours = set(ResNet(depth=50).state_dict())
    theirs = {k for k in torchvision.models.resnet50().state_dict() if not k.startswith("fc.")}
    assert ours == theirs


def test_mobilenet_v2_classifier_params_match_torchvision() -> None:
    backbone = MobileNetV2()
    total = n_params(backbone) + linear_params(1280, 1000)
    assert total == 3_504_872
    assert total == n_params(torchvision.models.mobilenet_v2())


def test_resnet_cifar_seed_tutorial_params() -> None:
    backbone = ResNet_CIFAR(depth=18)
    assert n_params(backbone) == 11_168_832
    assert n_params(backbone) + linear_params(512, 10) == 11_173_962


def test_seed_tutorial_spec_total_params() -> None:
    pytest.importorskip("pretrain_builtins.models.classifier")
    import pretrain

    model = pretrain.build(Path(__file__).parents[1] / "examples/specs/seed_tutorial.toml")
    assert n_params(model) == 11_173_962


@pytest.mark.parametrize(
    ("arch", "tv_name"), [("small", "mobilenet_v3_small"), ("large", "mobilenet_v3_large")]
)
def test_mobilenet_v3_params_match_torchvision_features(arch: str, tv_name: str) -> None:
    ours = MobileNetV3(arch=arch)
    assert n_params(ours) == n_params(getattr(torchvision.models, tv_name)().features)


def test_mobilenet_v3_narrow_archs_match_mmpretrain_model_zoo() -> None:
    # Model-zoo totals with StackedLinearClsHead(in -> 1024 -> 1000): 2.04 M and 1.59 M.
    for arch, in_ch, zoo in (("small_075", 432, 2.04e6), ("small_050", 288, 1.59e6)):
        head = linear_params(in_ch, 1024) + linear_params(1024, 1000)
        assert abs(n_params(MobileNetV3(arch=arch)) + head - zoo) < 0.005e6


# ----------------------------------------------------------------------------- shapes


SHAPE_CASES = [
    (lambda: ResNet(depth=18, out_indices=(0, 1, 2, 3)), 64,
     [(64, 16), (128, 8), (256, 4), (512, 2)]),
    (lambda: ResNetV1d(depth=50, out_indices=(1, 3)), 64, [(512, 8), (2048, 2)]),
    (lambda: ResNetV1c(depth=34), 64, [(512, 2)]),
    (lambda: ResNet_CIFAR(depth=18, out_indices=(0, 3)), 32, [(64, 32), (512, 4)]),
    (lambda: ResNet(depth=50, style="caffe", out_indices=(2,)), 64, [(1024, 4)]),
    (lambda: MobileNetV2(out_indices=(0, 3, 7)), 64, [(16, 32), (64, 4), (1280, 2)]),
    (lambda: MobileNetV2(widen_factor=0.5, out_indices=(6, 7)), 64, [(160, 2), (1280, 2)]),
    (lambda: MobileNetV2(widen_factor=1.4), 64, [(1792, 2)]),
    (lambda: MobileNetV3(arch="small"), 64, [(576, 2)]),
    (lambda: MobileNetV3(arch="small_050", out_indices=(0, 1, 11)), 64,
     [(16, 32), (8, 16), (48, 2)]),
    (lambda: MobileNetV3(arch="large", out_indices=(3, 16)), 64, [(24, 16), (960, 2)]),
]
SHAPE_IDS = [
    "resnet18-all", "resnetv1d50", "resnetv1c34", "resnet_cifar18", "resnet50-caffe",
    "mobilenet_v2", "mobilenet_v2-0.5", "mobilenet_v2-1.4", "mobilenet_v3-small",
    "mobilenet_v3-small_050", "mobilenet_v3-large",
]


@pytest.mark.parametrize(("make", "size", "expected"), SHAPE_CASES, ids=SHAPE_IDS)
def test_output_shapes(make, size: int, expected: list[tuple[int, int]]) -> None:
    backbone = make().eval()
    with torch.no_grad():
        outs = backbone(torch.randn(2, 3, size, size))
    assert isinstance(outs, tuple)
    assert [(o.shape[1], o.shape[2]) for o in outs] == expected
    assert all(o.shape[0] == 2 and o.shape[2] == o.shape[3] for o in outs)
    assert backbone.out_channels == tuple(c for c, _ in expected)


def test_resnet_dilation_keeps_resolution() -> None:
    backbone = ResNet(depth=18, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)).eval()
    with torch.no_grad():
        (out,) = backbone(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 512, 8, 8)


def test_backbones_build_on_meta_device() -> None:
    with torch.device("meta"):
        for backbone in (ResNetV1d(depth=101, drop_path_rate=0.1), MobileNetV3(arch="large")):
            out = backbone(torch.empty(2, 3, 64, 64))
            assert out[-1].is_meta


# ----------------------------------------------------------------------------- validation


def spec_error(spec: dict[str, object]) -> str:
    with pytest.raises(SpecError) as info:
        build_from_spec("backbone", spec)
    return str(info.value)


@pytest.mark.parametrize(
    ("spec", "loc", "words"),
    [
        ({"type": "ResNet", "depth": 51}, "backbone.depth", "18, 34, 50, 101 or 152"),
        ({"type": "ResNet", "depth": 50, "out_indices": [-1]}, "backbone.out_indices", "0..3"),
        ({"type": "ResNet", "depth": 50, "out_indices": [4]}, "backbone.out_indices", "0..3"),
        ({"type": "ResNet", "depth": 50, "out_indices": []}, "backbone.out_indices", "at least one"),
        ({"type": "ResNet", "depth": 50, "out_indices": [3, 1]}, "backbone.out_indices", "increasing"),
        ({"type": "ResNet", "depth": 50, "num_stages": 3, "strides": [1, 2, 2],
          "dilations": [1, 1, 1], "out_indices": [3]}, "backbone.out_indices", "0..2"),
        ({"type": "ResNet", "depth": 18, "num_stages": 2}, "backbone.strides", "one per stage"),
        ({"type": "ResNet", "depth": 18, "frozen_stages": 5}, "backbone.frozen_stages", "-1..4"),
        ({"type": "ResNet", "depth": 34, "expansion": 2}, "backbone.expansion", "BasicBlock"),
        ({"type": "ResNet_CIFAR", "depth": 18, "deep_stem": True}, "backbone.deep_stem",
         "not supported"),
        ({"type": "ResNetV1c", "depth": 50, "deep_stem": False}, "backbone.deep_stem", "always"),
        ({"type": "ResNetV1d", "depth": 50, "avg_down": False}, "backbone.avg_down", "always"),
        ({"type": "MobileNetV2", "out_indices": [8]}, "backbone.out_indices", "0..7"),
        ({"type": "MobileNetV2", "frozen_stages": 8}, "backbone.frozen_stages", "7"),
        ({"type": "MobileNetV3", "arch": "small", "out_indices": [13]}, "backbone.out_indices",
         "0..12"),
        ({"type": "MobileNetV3", "arch": "large", "frozen_stages": 17},
         "backbone.frozen_stages", "-1..16"),
        ({"type": "MobileNetV3", "arch": "tiny"}, "backbone.arch", "small"),
    ],
)
def test_spec_validation_errors(spec: dict[str, object], loc: str, words: str) -> None:
    message = spec_error(spec)
    assert loc in message
    assert words in message


def test_direct_construction_raises_clear_value_errors() -> None:
    with pytest.raises(ValueError, match="out_indices"):
        ResNet(depth=18, out_indices=(-1,))
    with pytest.raises(ValueError, match="deep_stem"):
        ResNet_CIFAR(depth=18, deep_stem=True)
    with pytest.raises(ValueError, match="out_indices"):
        MobileNetV2(out_indices=(8,))
    with pytest.raises(ValueError, match="out_indices"):
        MobileNetV3(arch="large", out_indices=(17,))


def test_valid_specs_build_with_documented_fields() -> None:
    for cls in (ResNet, ResNetV1c, ResNetV1d, ResNet_CIFAR, MobileNetV2, MobileNetV3):
        schema = component_schema(cls, "backbone", cls.__name__)
        undocumented = [f for f in schema.model.model_fields if not schema.descriptions.get(f)]
        assert undocumented == [], cls.__name__
    backbone = build_from_spec("backbone", {"type": "ResNetV1d", "depth": 18, "out_indices": [2, 3]})
    assert isinstance(backbone, ResNetV1d) and backbone.deep_stem and backbone.avg_down
    assert backbone.out_channels == (256, 512)


# ----------------------------------------------------------------------------- init


def test_default_init_and_zero_init_residual() -> None:
    torch.manual_seed(0)
    backbone = build_from_spec("backbone", {"type": "ResNet", "depth": 50})
    assert torch.all(backbone.layer1[0].bn3.weight == 0)
    assert torch.all(backbone.layer1[0].bn1.weight == 1)
    # Kaiming normal, fan_out, relu: std = sqrt(2 / (64 * 7 * 7)).
    assert backbone.conv1.weight.std().item() == pytest.approx((2 / 3136) ** 0.5, rel=0.05)
    plain = build_from_spec("backbone", {"type": "ResNet", "depth": 18, "zero_init_residual": False})
    assert torch.all(plain.layer1[0].bn2.weight == 1)


def test_pretrained_weights_are_not_zeroed_by_zero_init_residual(tmp_path) -> None:
    source = ResNet(depth=18)
    with torch.no_grad():
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    spec = {
        "type": "ResNet",
        "depth": 18,
        "init": [
            {"type": "Kaiming", "layer": ["Conv2d"]},
            {"type": "Pretrained", "checkpoint": str(path)},
        ],
    }
    loaded = build_from_spec("backbone", spec)
    assert torch.equal(loaded.layer1[0].bn2.weight, source.layer1[0].bn2.weight)


def test_mobilenet_v3_default_init_rules_apply() -> None:
    backbone = build_from_spec("backbone", {"type": "MobileNetV3", "arch": "small_050"})
    assert torch.all(backbone.layer0.bn.weight == 1)
    assert backbone.layer0.bn.eps == 1e-3 and backbone.layer0.bn.momentum == 0.01


# ----------------------------------------------------------------------------- freezing, norm_eval


def _step(backbone: nn.Module, size: int = 32) -> None:
    backbone.train()
    out = backbone(torch.randn(2, 3, size, size))
    sum(o.sum() for o in out).backward()


@pytest.mark.parametrize(
    ("make", "frozen", "trainable"),
    [
        (lambda: ResNet(depth=18, base_channels=16, frozen_stages=2),
         ["conv1", "bn1", "layer1", "layer2"], ["layer3", "layer4"]),
        (lambda: ResNetV1c(depth=18, base_channels=16, frozen_stages=0), ["stem"],
         ["layer1", "layer4"]),
        (lambda: MobileNetV2(widen_factor=0.5, frozen_stages=3), ["conv1", "layer1", "layer3"],
         ["layer4", "conv2"]),
        (lambda: MobileNetV3(arch="small_050", frozen_stages=4), ["layer0", "layer4"],
         ["layer5", "layer12"]),
    ],
    ids=["resnet", "resnetv1c-stem", "mobilenet_v2", "mobilenet_v3"],
)
def test_frozen_stages_get_no_gradients_and_stay_in_eval(
    make, frozen: list[str], trainable: list[str]
) -> None:
    backbone = make()
    _step(backbone)
    for name in frozen:
        module = getattr(backbone, name)
        assert not module.training, name
        for pname, p in module.named_parameters():
            assert not p.requires_grad and p.grad is None, f"{name}.{pname}"
    for name in trainable:
        module = getattr(backbone, name)
        assert module.training, name
        assert all(p.grad is not None for p in module.parameters()), name


def test_frozen_stem_batchnorm_statistics_do_not_move() -> None:
    backbone = MobileNetV2(widen_factor=0.5, frozen_stages=0)
    before = backbone.conv1.bn.running_mean.clone()
    _step(backbone)
    assert torch.equal(backbone.conv1.bn.running_mean, before)


def test_norm_eval_freezes_running_statistics_only() -> None:
    backbone = ResNet(depth=18, base_channels=16, norm_eval=True)
    before = backbone.layer3[0].bn1.running_mean.clone()
    _step(backbone)
    assert torch.equal(backbone.layer3[0].bn1.running_mean, before)
    assert backbone.layer3[0].bn1.weight.grad is not None
    assert backbone.training  # the module itself is in train mode
    plain = ResNet(depth=18, base_channels=16)
    before = plain.layer3[0].bn1.running_mean.clone()
    _step(plain)
    assert not torch.equal(plain.layer3[0].bn1.running_mean, before)


# ----------------------------------------------------------------------------- with_cp, drop path


@pytest.mark.parametrize(
    "make",
    [
        lambda cp: ResNet(depth=18, base_channels=16, with_cp=cp),
        lambda cp: ResNet(depth=50, stem_channels=16, base_channels=16, num_stages=2,
                          strides=(1, 2), dilations=(1, 1), out_indices=(1,), with_cp=cp),
        lambda cp: MobileNetV2(widen_factor=0.5, with_cp=cp),
        lambda cp: MobileNetV3(arch="small_050", with_cp=cp),
    ],
    ids=["resnet18", "resnet50-2stages", "mobilenet_v2", "mobilenet_v3"],
)
def test_with_cp_gives_same_outputs_and_gradients(make, monkeypatch) -> None:
    import torch.utils.checkpoint as cp

    calls = []
    real = cp.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cp, "checkpoint", counting)
    torch.manual_seed(0)
    plain = make(False).eval()
    ckpt = make(True).eval()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for model in (plain, ckpt):
        inp = x.clone().requires_grad_(True)
        out = model(inp)[-1]
        out.square().mean().backward()
        grads.append((out.detach(), inp.grad, next(model.parameters()).grad))
    assert calls  # the checkpointed path really ran
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(a, b)


def test_drop_path_rates_grow_linearly_and_vanish_in_eval() -> None:
    backbone = ResNet(depth=18, drop_path_rate=0.3)
    rates = [
        blk.drop_path.drop_prob if isinstance(blk.drop_path, DropPath) else 0.0
        for name in backbone.res_layers
        for blk in getattr(backbone, name)
    ]
    assert rates == pytest.approx([0.3 * i / 7 for i in range(8)])
    reference = ResNet(depth=18)
    reference.load_state_dict(backbone.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(x)[0], reference.eval()(x)[0])
        backbone.train()
        assert not torch.allclose(backbone(x)[0], reference.train()(x)[0])


def test_drop_path_keeps_expectation() -> None:
    torch.manual_seed(0)
    layer = DropPath(0.25).train()
    out = layer(torch.ones(20000, 1))
    assert out.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert out.mean().item() == pytest.approx(1.0, abs=0.03)


def test_make_divisible_matches_mobilenet_rule() -> None:
    assert make_divisible(32 * 0.5, 8) == 16
    assert make_divisible(320 * 1.4, 8) == 448
    assert make_divisible(24 * 0.35, 8) == 8
    assert make_divisible(10, 8) == 16  # rounding down would lose more than 10 %


# ----------------------------------------------------------------------------- layer-wise LR decay


def test_get_layer_depth_resnet50_matches_mmpretrain_grouping() -> None:
    backbone = ResNet(depth=50)
    expected = {
        "backbone.conv1.weight": 0,
        "backbone.bn1.bias": 0,
        "backbone.layer1.2.conv1.weight": 1,
        "backbone.layer2.0.conv1.weight": 2,
        "backbone.layer2.3.bn3.weight": 3,
        "backbone.layer3.0.conv1.weight": 4,
        "backbone.layer3.5.conv1.weight": 5,
        "backbone.layer4.2.conv3.weight": 6,
        "head.fc.weight": 7,
    }
    for name, layer_id in expected.items():
        assert backbone.get_layer_depth(name, prefix="backbone.") == (layer_id, 8), name
    # Without a prefix, the backbone's own names work too.
    assert backbone.get_layer_depth("layer3.5.conv1.weight") == (5, 8)


def test_get_layer_depth_covers_every_depth() -> None:
    for depth in (18, 34, 101, 152):
        backbone = ResNet(depth=depth)
        ids = [backbone.get_layer_depth(n)[0] for n, _ in backbone.named_parameters()]
        num_layers = backbone.get_layer_depth("conv1.weight")[1]
        assert min(ids) == 0 and max(ids) == num_layers - 2
        assert ids == sorted(ids)  # depth ids never decrease along the network
    assert ResNet(depth=18).get_layer_depth("layer2.1.conv1.weight") == (3, 8)
    assert ResNet(depth=101).get_layer_depth("backbone.layer3.22.conv1.weight", "backbone.") == (
        11, 14
    )
