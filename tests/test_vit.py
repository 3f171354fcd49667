"""VisionTransformer backbone, VisionTransformerClsHead and the ViT weight converter."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pretrain import SpecError
from pretrain.assembly.assemble import build_from_spec
from pretrain_builtins.backbones.vision_transformer import VisionTransformer
from pretrain_builtins.converters import WeightConversionError
from pretrain_builtins.converters.vit import backbone_spec, convert
from pretrain_builtins.heads.vit_head import VisionTransformerClsHead

SPECS = Path(__file__).resolve().parents[1] / "examples" / "specs"

TINY = {"embed_dims": 32, "num_layers": 2, "num_heads": 2, "feedforward_channels": 64}


class Classifier(nn.Module):
    """backbone -> head, with ImageClassifier's child names (so converted keys load)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def vit(**kw: Any) -> VisionTransformer:
    spec = {"type": "VisionTransformer", "arch": TINY, "img_size": 32, "patch_size": 8, **kw}
    model = build_from_spec("backbone", spec)
    assert isinstance(model, VisionTransformer)
    return model


def randomise(module: nn.Module, seed: int = 0) -> None:
    """Overwrite every parameter with N(0, 0.2) so parity tests exercise every weight."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def issues(kind: str, spec: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        build_from_spec(kind, spec)
    return {i.loc: i.msg for i in info.value.issues}


# ----------------------------------------------------------------------------- backbone


@pytest.mark.parametrize(
    ("out_type", "shape"),
    [("cls_token", (2, 32)), ("featmap", (2, 32, 4, 4)), ("avg_featmap", (2, 32)), ("raw", (2, 17, 32))],
)
def test_out_types(out_type: str, shape: tuple[int, ...]) -> None:
    out = vit(out_type=out_type)(torch.randn(2, 3, 32, 32))
    assert isinstance(out, tuple) and len(out) == 1
    assert out[0].shape == shape


def test_no_cls_token_raw_and_featmap() -> None:
    model = vit(with_cls_token=False, out_type="raw")
    assert model.cls_token is None and model.pos_embed.shape == (1, 16, 32)
    assert model(torch.randn(2, 3, 32, 32))[0].shape == (2, 16, 32)
    fm = vit(with_cls_token=False, out_type="featmap")(torch.randn(1, 3, 32, 32))[0]
    assert fm.shape == (1, 32, 4, 4)


def test_featmap_is_patch_tokens_in_grid_order() -> None:
    model = vit(out_type="raw").eval()
    model_fm = vit(out_type="featmap").eval()
    model_fm.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 32, 40)
    raw, fm = model(x)[0], model_fm(x)[0]
    # token 1 + r*W + c is grid cell (r, c)
    assert torch.allclose(fm[0, :, 2, 3], raw[0, 1 + 2 * 5 + 3])


def test_out_indices_negative_and_order() -> None:
    model = vit(out_type="raw", out_indices=[-1, 0], final_norm=False).eval()
    x = torch.randn(2, 3, 32, 32)
    last, first = model(x)
    # Recompute layer by layer: the outputs follow the order of out_indices.
    tokens, _ = model.patch_embed(x)
    tokens = torch.cat([model.cls_token.expand(2, -1, -1), tokens], 1) + model.pos_embed
    after0 = model.layers[0](tokens)
    assert torch.allclose(first, after0, atol=1e-6)
    assert torch.allclose(last, model.layers[1](after0), atol=1e-6)


def test_out_indices_list_not_mutated() -> None:
    indices = [-1, -2]
    VisionTransformer(arch=TINY, img_size=32, patch_size=8, out_indices=indices)
    assert indices == [-1, -2]


@pytest.mark.parametrize("bad", [[2], [-3], 2, [0, -2]])
def test_out_indices_out_of_range_is_validation_error(bad: Any) -> None:
    found = issues("backbone", {"type": "VisionTransformer", "arch": TINY, "out_indices": bad})
    assert "backbone.out_indices" in found


def test_cls_token_out_type_needs_cls_token() -> None:
    found = issues(
        "backbone", {"type": "VisionTransformer", "arch": "deit-t", "with_cls_token": False}
    )
    assert "with_cls_token" in found["backbone.with_cls_token"]
    with pytest.raises(ValueError, match="cls token"):
        VisionTransformer(arch="deit-t", with_cls_token=False)


@pytest.mark.parametrize(
    ("arch", "needle"),
    [
        ("deit-huge", "unknown ViT arch"),
        ({"embed_dims": 32, "num_layers": 2, "num_heads": 2}, "missing feedforward_channels"),
        ({**TINY, "depth": 3}, "unknown depth"),
        ({**TINY, "num_heads": 5}, "divisible by num_heads"),
        ({**TINY, "num_layers": 0}, "positive"),
    ],
)
def test_arch_validation(arch: Any, needle: str) -> None:
    found = issues("backbone", {"type": "VisionTransformer", "arch": arch})
    assert needle in found["backbone.arch"]


def test_frozen_stages_validation() -> None:
    found = issues("backbone", {"type": "VisionTransformer", "arch": TINY, "frozen_stages": 3})
    assert "only 2 layers" in found["backbone.frozen_stages"]


@pytest.mark.parametrize(
    ("arch", "dims", "layers"),
    [("deit-tiny", 192, 12), ("deit-t", 192, 12), ("deit-small", 384, 12), ("deit-s", 384, 12),
     ("base", 768, 12), ("b", 768, 12), ("large", 1024, 24), ("l", 1024, 24), ("s", 768, 8),
     ("huge", 1280, 32), ("DeiT-Tiny", 192, 12)],
)
def test_arch_presets(arch: str, dims: int, layers: int) -> None:
    settings = VisionTransformer.arch_settings(arch)
    assert (settings["embed_dims"], settings["num_layers"]) == (dims, layers)


def test_other_input_sizes_interpolate_pos_embed() -> None:
    torch.manual_seed(0)
    small = vit(out_type="raw").eval()
    x = torch.randn(2, 3, 48, 40)
    out = small(x)[0]
    assert out.shape == (2, 1 + 6 * 5, 32)
    # A model built for 48x40 that loads the 32x32 weights (resized by the load hook)
    # computes exactly the same thing.
    big = vit(out_type="raw", img_size=[48, 40]).eval()
    big.load_state_dict(small.state_dict())
    assert big.pos_embed.shape == (1, 31, 32)
    assert torch.allclose(big(x)[0], out, atol=1e-6)


def test_load_hook_resizes_and_drops_cls_slot() -> None:
    src = vit(img_size=32)
    dst = vit(img_size=64, with_cls_token=False, out_type="avg_featmap")
    state = {k: v for k, v in src.state_dict().items() if k != "cls_token"}
    missing, unexpected = dst.load_state_dict(state, strict=False)
    assert unexpected == [] and set(missing) == {"ln2.weight", "ln2.bias"}
    assert dst.pos_embed.shape == (1, 64, 32)
    grid = src.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False)
    assert torch.allclose(dst.pos_embed, expected.flatten(2).transpose(1, 2), atol=1e-6)


def test_inputs_not_divisible_by_patch_are_padded() -> None:
    out = vit(out_type="featmap")(torch.randn(1, 3, 33, 30))[0]
    assert out.shape == (1, 32, 5, 4)


def test_get_layer_depth() -> None:
    model = vit()
    names = dict(model.named_parameters())
    assert model.get_layer_depth("cls_token") == (0, 4)
    assert model.get_layer_depth("pos_embed") == (0, 4)
    assert model.get_layer_depth("patch_embed.projection.weight") == (0, 4)
    assert model.get_layer_depth("layers.1.attn.qkv.weight") == (2, 4)
    assert model.get_layer_depth("ln1.weight") == (3, 4)
    assert model.get_layer_depth("backbone.layers.0.ln1.bias", prefix="backbone.") == (1, 4)
    assert model.get_layer_depth("head.fc.weight", prefix="backbone.") == (3, 4)
    assert all(0 <= model.get_layer_depth(n)[0] < 4 for n in names)


def test_frozen_stages() -> None:
    model = vit(frozen_stages=1, drop_rate=0.5)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert "pos_embed" in frozen and "cls_token" in frozen
    assert all(not p.requires_grad for p in model.patch_embed.parameters())
    assert all(not p.requires_grad for p in model.layers[0].parameters())
    assert all(p.requires_grad for p in model.layers[1].parameters())
    model.train()
    assert not model.layers[0].training and model.layers[1].training
    model(torch.randn(2, 3, 32, 32))[0].sum().backward()
    assert model.layers[0].attn.qkv.weight.grad is None
    assert model.layers[1].attn.qkv.weight.grad is not None
    full = vit(frozen_stages=2, out_type="avg_featmap")
    assert not any(p.requires_grad for p in full.parameters())


def test_drop_path_schedule_and_modes() -> None:
    model = vit(drop_path_rate=0.5, arch={**TINY, "num_layers": 3})
    probs = [layer.attn.out_drop.drop_prob if hasattr(layer.attn.out_drop, "drop_prob") else 0.0
             for layer in model.layers]
    assert probs == pytest.approx([0.0, 0.25, 0.5])
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])
    model.train()
    torch.manual_seed(0)
    a = model(x)[0]
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x)[0])


def test_with_cp_matches() -> None:
    torch.manual_seed(0)
    plain = vit()
    ckpt = vit(with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    plain(x)[0].square().sum().backward()
    ckpt(x)[0].square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


def test_layer_scale_and_pre_norm() -> None:
    model = vit(layer_scale_init_value=0.1, pre_norm=True)
    assert torch.allclose(model.layers[0].attn.gamma1.weight, torch.full((32,), 0.1))
    assert "layers.0.ffn.gamma2.weight" in model.state_dict()
    assert model.patch_embed.projection.bias is None
    assert isinstance(model.pre_norm, nn.LayerNorm)


def test_default_init() -> None:
    torch.manual_seed(0)
    model = vit()
    assert 0.015 < model.pos_embed.std().item() < 0.025  # trunc normal 0.02
    assert torch.count_nonzero(model.cls_token) == 0
    bias = model.layers[0].ffn.layers[1].bias
    assert bias.abs().max() < 1e-4  # N(0, 1e-6)


def test_safetensors_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = vit(out_type="avg_featmap").eval()
    path = tmp_path / "vit.safetensors"
    save_file(model.state_dict(), str(path))
    again = vit(out_type="avg_featmap").eval()
    again.load_state_dict(load_file(str(path)))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x)[0], again(x)[0])


# ----------------------------------------------------------------------------- head


def head(**kw: Any) -> VisionTransformerClsHead:
    model = build_from_spec(
        "head", {"type": "VisionTransformerClsHead", "num_classes": 5, "in_channels": 32, **kw}
    )
    assert isinstance(model, VisionTransformerClsHead)
    return model


def test_head_init_and_shapes() -> None:
    plain = head()
    assert list(dict(plain.named_children())["layers"]._modules) == ["head"]
    assert torch.count_nonzero(plain.layers.head.weight) == 0
    hidden = head(hidden_dim=64)
    assert list(hidden.layers._modules) == ["pre_logits", "act", "head"]
    std = hidden.layers.pre_logits.weight.std().item()
    assert 0.7 * (1 / 32) ** 0.5 < std < 1.1 * (1 / 32) ** 0.5
    feats = (torch.randn(3, 32),)
    assert hidden(feats).shape == (3, 5)
    probs = hidden.predict(feats)
    assert probs.shape == (3, 5) and torch.allclose(probs.sum(1), torch.ones(3))


def test_head_loss_and_accuracy() -> None:
    torch.manual_seed(0)
    model = head(cal_acc=True, topk=[1, 2])
    nn.init.normal_(model.layers.head.weight)
    feats = (torch.randn(6, 32),)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    out = model.loss(feats, labels)
    logits = model(feats)
    assert torch.allclose(out["loss"], nn.functional.cross_entropy(logits, labels))
    top2 = logits.topk(2, dim=1).indices
    expected = (top2 == labels[:, None]).any(1).float().mean() * 100
    assert torch.allclose(out["accuracy/top2"], expected)
    assert set(out) == {"loss", "accuracy/top1", "accuracy/top2"}


def test_head_one_hot_for_dense_loss() -> None:
    torch.manual_seed(0)
    model = head(loss={"type": "L1Loss"})
    nn.init.normal_(model.layers.head.weight)
    feats = (torch.randn(4, 32),)
    labels = torch.tensor([0, 4, 2, 2])
    out = model.loss(feats, labels)["loss"]
    one_hot = nn.functional.one_hot(labels, 5).float()
    assert torch.allclose(out, (model(feats) - one_hot).abs().sum() / 4)


def test_head_rejects_spatial_features() -> None:
    with pytest.raises(Exception, match="cls_token"):
        head()((torch.randn(2, 32, 4, 4),))


# ----------------------------------------------------------------------------- params / converter


def test_vit_b16_classifier_param_count_matches_torchvision() -> None:
    from torchvision.models import vit_b_16

    with torch.device("meta"):
        ours = Classifier(
            VisionTransformer(arch="base", img_size=224, patch_size=16),
            VisionTransformerClsHead(num_classes=1000, in_channels=768),
        )
        theirs = vit_b_16()
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == 86_567_656


def torchvision_pair(representation_size: int | None = None) -> tuple[nn.Module, Classifier]:
    from torchvision.models.vision_transformer import VisionTransformer as TVViT

    torch.manual_seed(0)
    src = TVViT(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10, representation_size=representation_size,
    )
    randomise(src)
    dst = Classifier(
        vit(),
        VisionTransformerClsHead(num_classes=10, in_channels=32, hidden_dim=representation_size),
    )
    dst.load_state_dict(convert(src.state_dict(), source="torchvision", arch="vit"))
    return src.eval(), dst.eval()


@pytest.mark.parametrize("representation_size", [None, 24])
def test_torchvision_logit_parity(representation_size: int | None) -> None:
    src, dst = torchvision_pair(representation_size)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        diff = (src(x) - dst(x)).abs().max().item()
    assert diff <= 1e-4


def test_torchvision_old_mlp_names() -> None:
    from torchvision.models.vision_transformer import VisionTransformer as TVViT

    state = TVViT(32, 8, 2, 2, 32, 64).state_dict()
    old = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
           for k, v in state.items()}
    assert convert(old, source="torchvision", arch="vit") == convert(
        state, source="torchvision", arch="vit"
    )


def test_timm_vit_tiny_parity() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=7)
    randomise(src)
    dst = Classifier(
        build_from_spec("backbone", {**(backbone_spec("vit_tiny_patch16_224", "timm") or {}), "img_size": 32}),
        VisionTransformerClsHead(num_classes=7, in_channels=192),
    )
    dst.load_state_dict(convert(src.state_dict(), source="timm", arch="vit_tiny_patch16_224"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (src.eval()(x) - dst.eval()(x)).abs().max().item() <= 1e-4


def test_timm_avg_pool_layer_scale_parity() -> None:
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    torch.manual_seed(0)
    src = TimmViT(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
        num_classes=10, global_pool="avg", init_values=0.1,
    )
    assert timm is not None
    randomise(src)
    backbone = vit(out_type="avg_featmap", final_norm=False, layer_scale_init_value=0.1)
    dst = Classifier(backbone, VisionTransformerClsHead(num_classes=10, in_channels=32))
    dst.load_state_dict(convert(src.state_dict(), source="timm", arch="vit"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (src.eval()(x) - dst.eval()(x)).abs().max().item() <= 1e-4


def test_converter_errors() -> None:
    from torchvision.models.vision_transformer import VisionTransformer as TVViT

    state = TVViT(32, 8, 2, 2, 32, 64).state_dict()
    with pytest.raises(WeightConversionError, match="12 layers of width 768"):
        convert(state, source="torchvision", arch="vit_b_16")
    with pytest.raises(WeightConversionError, match="not understood: extra_token"):
        convert({**state, "extra_token": torch.zeros(1)}, source="torchvision", arch="vit")
    with pytest.raises(WeightConversionError, match="cannot convert"):
        convert(state, source="torchvision", arch="vit_tiny_patch16_224")
    with pytest.raises(WeightConversionError):
        convert(state, source="keras", arch="vit")  # type: ignore[arg-type]


def test_backbone_spec_names() -> None:
    assert backbone_spec("vit_b_16", "torchvision") == {
        "type": "VisionTransformer", "arch": "base", "patch_size": 16, "img_size": 224
    }
    assert backbone_spec("vit_small_patch16_384.augreg_in21k", "timm")["arch"] == "deit-small"
    assert backbone_spec("deit_tiny_patch16_224", "timm")["arch"] == "deit-tiny"
    assert backbone_spec("vit", "timm") is None


# ----------------------------------------------------------------------------- example specs


@pytest.mark.parametrize("name", ["vit-base-p16_imagenet.toml", "deit-tiny_cifar.toml"])
def test_example_specs_validate(name: str) -> None:
    import pretrain

    try:
        pretrain.get_registry().get("model", "ImageClassifier")
    except Exception as exc:  # pragma: no cover - until the classifier lands
        pytest.skip(f"ImageClassifier not available yet: {exc}")
    raw = pretrain.load_spec(SPECS / name)
    validated = pretrain.validate_spec(copy.deepcopy(raw))
    assert validated.model.child("backbone").type_name == "VisionTransformer"


def test_converted_file_loads_with_pretrained_rule_into_spec_model(tmp_path: Path) -> None:
    """convert -> safetensors -> `Pretrained` init rule -> same logits as torchvision."""
    import pretrain

    src, _ = torchvision_pair()
    path = tmp_path / "vit.safetensors"
    save_file(
        {k: v.contiguous() for k, v in convert(src.state_dict(), source="torchvision", arch="vit").items()},
        str(path),
    )
    spec = {
        "model": {
            "type": "ImageClassifier",
            "init": [{"type": "Pretrained", "checkpoint": str(path)}],
            "backbone": {"type": "VisionTransformer", "arch": TINY, "img_size": 32, "patch_size": 8},
            "head": {"type": "VisionTransformerClsHead", "num_classes": 10, "in_channels": 32},
        }
    }
    model = pretrain.build_model(spec).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    normalised = (images.float() - model.mean) / model.std  # torchvision takes normalised input
    with torch.no_grad():
        assert (model(images) - src(normalised)).abs().max().item() <= 1e-4


def test_convert_weights_command_timm_vit_tiny(tmp_path: Path) -> None:
    """`pretrain convert-weights` on a timm checkpoint, loaded by a spec's Pretrained rule."""
    timm = pytest.importorskip("timm")
    import pretrain
    from pretrain.cli._convert import convert_file

    torch.manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10).eval()
    randomise(src)
    torch.save(src.state_dict(), tmp_path / "src.pth")
    dst = tmp_path / "vit_tiny.safetensors"
    summary = convert_file(tmp_path / "src.pth", dst, source="timm", arch="vit_tiny_patch16_224")
    assert summary["family"] == "vit" and summary["backbone"]["arch"] == "deit-tiny"
    spec = {
        "model": {
            "type": "ImageClassifier",
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
            "init": [{"type": "Pretrained", "checkpoint": str(dst)}],
            "backbone": summary["backbone"],
            "head": {"type": "VisionTransformerClsHead", "num_classes": 10, "in_channels": 192},
        }
    }
    model = pretrain.build_model(spec).eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - src(x)).abs().max().item() <= 1e-4
