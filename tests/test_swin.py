"""Swin Transformer: parameter counts and logits equal torchvision's after conversion; SimMIM's masked variant."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torchvision
from torchvision.models.swin_transformer import SwinTransformer as TVSwin

from pretrain import build_model
from pretrain.assembly.assemble import build_from_spec
from pretrain.cli._convert import find_converter
from pretrain_builtins.backbones.swin import SimMIMSwinTransformer, SwinTransformer
from pretrain_builtins.converters import WeightConversionError
from pretrain_builtins.converters.swin import convert, merge_permutation
from pretrain_builtins.layers import resize_relative_position_bias_table, shifted_window_mask

TINY = {"embed_dims": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4]}


def classifier(arch: Any, classes: int, width: int, **backbone: Any) -> Any:
    return build_model({"model": {
        "type": "ImageClassifier", "mean": None, "std": None,
        "backbone": {"type": "SwinTransformer", "arch": arch, **backbone},
        "neck": {"type": "GlobalAveragePooling"},
        "head": {"type": "LinearClsHead", "num_classes": classes, "in_channels": width},
    }}).eval()


def logits(model: Any, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.head(model.neck(model.backbone(x)))  # type: ignore[no-any-return]


@pytest.mark.parametrize(("name", "arch", "width"), [("swin_t", "tiny", 768), ("swin_s", "small", 768),
                                                     ("swin_b", "base", 1024)])
def test_parameter_counts_equal_torchvision(name: str, arch: str, width: int) -> None:
    with torch.device("meta"):
        tv = getattr(torchvision.models, name)()
        ours = build_model({"model": {
            "type": "ImageClassifier", "backbone": {"type": "SwinTransformer", "arch": arch},
            "neck": {"type": "GlobalAveragePooling"},
            "head": {"type": "LinearClsHead", "num_classes": 1000, "in_channels": width},
        }})
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in tv.parameters())
    assert count == {"swin_t": 28_288_354, "swin_s": 49_606_258, "swin_b": 87_768_224}[name]
    # The converted key set is exactly ours, shapes included.
    converted = convert(tv.state_dict(), source="torchvision", arch=name)
    own = ours.state_dict()
    assert set(converted) == set(own)
    assert all(converted[k].shape == own[k].shape for k in own)


@pytest.mark.parametrize("size", [(32, 32), (36, 28), (20, 44), (8, 8)])
def test_tiny_logits_equal_torchvision_for_odd_grids(size: tuple[int, int]) -> None:
    # 36x28 px -> 9x7 patches: windows padded, merges of odd maps padded; 8x8: maps smaller than a window.
    torch.manual_seed(0)
    tv = TVSwin(patch_size=[4, 4], embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=[3, 3],
                num_classes=5).eval()
    ours = classifier(TINY, 5, 128, window_size=3)
    ours.load_state_dict(convert(tv.state_dict(), source="torchvision", arch="swin"), strict=True)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        diff = (tv(x) - logits(ours, x)).abs().max().item()
    assert diff <= 1e-4


@pytest.mark.slow
def test_swin_t_logits_equal_torchvision() -> None:
    torch.manual_seed(0)
    tv = torchvision.models.swin_t().eval()
    ours = classifier("tiny", 1000, 768)
    ours.load_state_dict(convert(tv.state_dict(), source="torchvision", arch="swin_t"), strict=True)
    for size in ((224, 224), (228, 196)):  # the second: 57x49 patches, odd maps at every stage
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            assert (tv(x) - logits(ours, x)).abs().max().item() <= 1e-4


def test_converter_is_registered_and_checks_the_depth() -> None:
    family, converter = find_converter("torchvision", "swin_t")
    assert family == "swin" and converter.backbone_spec("torchvision", "swin_b")["arch"] == "base"
    tv = TVSwin(patch_size=[4, 4], embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=[3, 3])
    with pytest.raises(WeightConversionError, match="stage depths"):
        convert(tv.state_dict(), source="torchvision", arch="swin_t")
    with pytest.raises(WeightConversionError, match="not understood"):
        convert({"features.9.0.foo.weight": torch.zeros(1)}, source="torchvision", arch="swin")
    with torch.device("meta"):
        current = {f"backbone.{k}": v for k, v in SwinTransformer(arch="tiny").state_dict().items()}
    old = {k.replace("norm3.", "norm."): v for k, v in current.items()}  # before MMPretrain's key version 2
    old["backbone.stages.0.blocks.1.attn.attn_mask"] = torch.zeros(1)  # and version 3
    assert set(convert(old, source="mmpretrain", arch="swin-tiny_16xb64_in1k")) == set(current)
    with pytest.raises(WeightConversionError, match="stage depths"):
        convert(old, source="mmpretrain", arch="swin-base")


def test_merge_permutation_maps_unfold_order_to_torchvision_order() -> None:
    c = 2
    x = torch.arange(4 * c * 4, dtype=torch.float).view(1, c, 4, 4)  # (B, C, H, W)
    h = x.permute(0, 2, 3, 1)  # torchvision's (B, H, W, C)
    tv = torch.cat([h[:, 0::2, 0::2], h[:, 1::2, 0::2], h[:, 0::2, 1::2], h[:, 1::2, 1::2]], -1)  # (1, 2, 2, 4C)
    unfold = torch.nn.functional.unfold(x, 2, stride=2).transpose(1, 2).view(1, 2, 2, 4 * c)
    assert torch.equal(tv[..., merge_permutation(c)], unfold)


def test_shift_mask_and_table_resize() -> None:
    mask = shifted_window_mask((6, 6), 3, (1, 1))
    assert mask.shape == (4, 9, 9) and bool((mask[0] == 0).all()) and bool((mask[3] != 0).any())
    table = torch.randn(13 * 13, 4)
    resized = resize_relative_position_bias_table(table, (7, 7), (6, 6))
    assert resized.shape == (11 * 11, 4)
    grid = table.view(13, 13, 4)
    assert torch.allclose(resized.view(11, 11, 4)[5, 5], grid[6, 6], atol=1e-5)  # zero offset stays put
    assert torch.allclose(resized.view(11, 11, 4)[0, 0], grid[0, 0], atol=1e-5)


def test_checkpoint_of_another_window_loads_resized() -> None:
    src = SwinTransformer(arch=TINY, window_size=7, img_size=64)
    dst = SwinTransformer(arch=TINY, window_size=4, img_size=64)
    dst.load_state_dict(src.state_dict(), strict=True)
    table = dst.stages[0].blocks[0].attn.w_msa.relative_position_bias_table
    assert table.shape == (49, 1)
    assert dst.stages[0].blocks[0].attn.w_msa.relative_position_index.max().item() == 48
    dst(torch.randn(1, 3, 64, 64))


def test_simmim_swin_mask_token_replaces_masked_patches() -> None:
    torch.manual_seed(0)
    model = build_from_spec("backbone", {"type": "SimMIMSwinTransformer", "arch": TINY, "img_size": 32,
                                         "window_size": 4}).eval()
    assert isinstance(model, SimMIMSwinTransformer)
    x = torch.randn(2, 3, 32, 32)
    none = torch.zeros(2, 8, 8, dtype=torch.bool)
    some = none.clone()
    some[:, :4] = True
    plain, unmasked, masked = model(x)[0], model(x, none)[0], model(x, some)[0]
    assert plain.shape == (2, 128, 1, 1) and torch.allclose(plain, unmasked)
    assert not torch.allclose(plain, masked)
    model.train()
    # Not a plain .sum(): the final LayerNorm's outputs sum to a constant over channels.
    (model(x, some)[0] * torch.randn(2, 128, 1, 1)).sum().backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="patch grid"):
        model(x, torch.zeros(2, 4, 4, dtype=torch.bool))


def test_spec_checks_layer_depth_and_frozen_stages() -> None:
    from pretrain.spec.validate import ValidationContext

    ctx = ValidationContext()
    ctx.component("backbone", {"type": "SwinTransformer", "arch": "huge", "out_indices": [4]}, "model.backbone")
    ctx.component("backbone", {"type": "SwinTransformer", "out_indices": [4], "stage_cfgs": {"x": {}}}, "b")
    text = "\n".join(str(i) for i in ctx.issues)
    assert "unknown Swin arch" in text and "out_indices" in text and "stage_cfgs" in text
    port = SimMIMSwinTransformer(arch=TINY, stage_cfgs={"block_cfgs": {"window_size": 6}})
    assert port.window_size == 6 and port.stages[0].blocks[0].attn.window_size == 6
    model = SwinTransformer(arch="tiny", frozen_stages=1)
    assert not any(p.requires_grad for p in model.stages[1].parameters())
    assert all(p.requires_grad for p in model.stages[2].parameters())
    model.train()
    assert not model.stages[0].training and model.stages[2].training
    assert model.get_layer_depth("backbone.patch_embed.projection.weight", "backbone.") == (0, 14)
    assert model.get_layer_depth("backbone.stages.1.blocks.1.attn.w_msa.qkv.weight", "backbone.") == (4, 14)
    assert model.get_layer_depth("backbone.stages.1.downsample.reduction.weight", "backbone.") == (4, 14)
    assert model.get_layer_depth("backbone.norm3.weight", "backbone.") == (13, 14)
    assert model.get_layer_depth("head.fc.weight", "backbone.") == (13, 14)
