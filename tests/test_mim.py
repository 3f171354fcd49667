"""Masked image modelling beyond MAE: BEiT v1/v2, MaskFeat, SimMIM, the frozen tokenizers and their converter."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from pretrain import build_model
from pretrain.assembly.assemble import build_from_spec
from pretrain.cli._convert import find_converter
from pretrain.components import Masked
from pretrain.errors import PretrainError
from pretrain_builtins.backbones.beit import BEiTPretrainViT, BEiTViT
from pretrain_builtins.converters import WeightConversionError
from pretrain_builtins.converters.beit import VQKD_BASE_ENCODER, convert
from pretrain_builtins.layers import relative_position_index
from pretrain_builtins.losses.reconstruction import PixelReconstructionLoss
from pretrain_builtins.target_generators.dalle import DALLEEncoder
from pretrain_builtins.target_generators.vqkd import VQKD

# ----------------------------------------------------------------------------- MMPretrain's configs

INIT = [{"type": "TruncNormal", "std": 0.02, "layer": "Linear"}, {"type": "TruncNormal", "std": 0.02, "layer": "Conv2d"},
        {"type": "Constant", "layer": "LayerNorm", "val": 1.0, "bias": 0.0}]
# configs/beitv2/beitv2_beit-base-p16_8xb256-amp-coslr-300e_in1k.py's vqkd_encoder, field for field.
VQKD_ENCODER = {"arch": "base", "img_size": 224, "patch_size": 16, "in_channels": 3, "out_indices": -1,
                "drop_rate": 0.0, "drop_path_rate": 0.0, "norm_cfg": {"type": "LN", "eps": 1e-6}, "final_norm": True,
                "out_type": "featmap", "with_cls_token": True, "frozen_stages": -1, "use_abs_pos_emb": True,
                "use_rel_pos_bias": False, "use_shared_rel_pos_bias": False, "layer_scale_init_value": 0.0,
                "interpolate_mode": "bicubic", "patch_cfg": {}, "layer_cfgs": {}, "init_cfg": None}
CONFIGS: dict[str, tuple[dict[str, Any], int]] = {
    "beit_v1": ({"type": "BEiT", "second_mean": [-31.875] * 3, "second_std": [318.75] * 3,
                 "backbone": {"type": "BEiTPretrainViT", "arch": "base", "patch_size": 16, "drop_path_rate": 0.1,
                              "final_norm": True, "out_type": "raw", "layer_scale_init_value": 0.1, "init": INIT},
                 "head": {"type": "BEiTV1Head", "embed_dims": 768, "num_embed": 8192,
                          "loss": {"type": "CrossEntropyLoss"}},
                 "target_generator": {"type": "DALL-E"}}, 145_752_016),
    "beit_v2": ({"type": "BEiT", "second_mean": [127.5] * 3, "second_std": [127.5] * 3,
                 "backbone": {"type": "BEiTPretrainViT", "arch": "base", "patch_size": 16, "out_indices": [-4, -1],
                              "drop_path_rate": 0.0, "final_norm": False, "out_type": "raw",
                              "layer_scale_init_value": 0.1, "init": INIT},
                 "neck": {"type": "BEiTV2Neck", "num_layers": 2, "early_layers": 9, "backbone_arch": "base",
                          "drop_path_rate": 0.0, "layer_scale_init_value": 0.1},
                 "head": {"type": "BEiTV2Head", "embed_dims": 768, "num_embed": 8192,
                          "loss": {"type": "CrossEntropyLoss"}},
                 "target_generator": {"type": "VQKD", "encoder_config": VQKD_ENCODER}}, 192_809_840),
    "maskfeat": ({"type": "MaskFeat",
                  "backbone": {"type": "MaskFeatViT", "arch": "b", "patch_size": 16, "drop_path_rate": 0.0},
                  "neck": {"type": "LinearNeck", "in_channels": 768, "out_channels": 108, "norm": "none"},
                  "head": {"type": "MIMHead", "loss": {"type": "PixelReconstructionLoss", "criterion": "L2"}},
                  "target_generator": {"type": "HOGGenerator", "nbins": 9, "pool": 8, "gaussian_window": 16}},
                 85_882_476),
    "simmim": ({"type": "SimMIM",
                "backbone": {"type": "SimMIMSwinTransformer", "arch": "base", "img_size": 192,
                             "stage_cfgs": {"block_cfgs": {"window_size": 6}}},
                "neck": {"type": "SimMIMLinearDecoder", "in_channels": 128 * 2**3, "encoder_stride": 32},
                "head": {"type": "SimMIMHead", "patch_size": 4,
                         "loss": {"type": "PixelReconstructionLoss", "criterion": "L1", "channel": 3}}},
               89_874_104),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_mmpretrain_configs_have_its_parameter_counts(name: str) -> None:
    spec, count = CONFIGS[name]
    with torch.device("meta"):
        model = build_model({"model": spec})
    assert sum(p.numel() for p in model.parameters()) == count
    if model.target_generator is not None and name.startswith("beit"):
        # The tokenizer is frozen: nothing of it is trainable, so the optimizer never sees it.
        assert not any(p.requires_grad for p in model.target_generator.parameters())


# ----------------------------------------------------------------------------- tiny models

TINY_VIT = {"embed_dims": 16, "num_layers": 3, "num_heads": 2, "feedforward_channels": 32}


def tiny_beit(version: int, **tokenizer: Any) -> dict[str, Any]:
    backbone = {"type": "BEiTPretrainViT", "arch": TINY_VIT, "img_size": 16, "patch_size": 4, "in_channels": 1,
                "out_indices": [-2, -1] if version == 2 else -1, "final_norm": version == 1}
    if version == 1:
        gen = {"type": "DALL-E", "group_count": 2, "n_hid": 4, "n_blk_per_group": 1, "vocab_size": 16,
               "input_channels": 1, **tokenizer}
        return {"type": "BEiT", "mean": [127.5], "std": [127.5], "second_mean": [-31.875], "second_std": [318.75],
                "backbone": backbone, "head": {"type": "BEiTV1Head", "embed_dims": 16, "num_embed": 16},
                "target_generator": gen}
    encoder = {"arch": TINY_VIT, "img_size": 16, "patch_size": 4, "in_channels": 1, "out_type": "featmap",
               "use_abs_pos_emb": True, "use_rel_pos_bias": False, "layer_scale_init_value": 0.0, "final_norm": True}
    gen = {"type": "VQKD", "encoder_config": encoder, "num_embed": 16, "embed_dims": 8,
           "quantize_kmeans_init": False, **tokenizer}
    return {"type": "BEiT", "mean": [127.5], "std": [127.5], "second_mean": [127.5], "second_std": [127.5],
            "backbone": backbone, "neck": {"type": "BEiTV2Neck", "num_layers": 1, "early_layers": 1,
                                           "backbone_arch": TINY_VIT},
            "head": {"type": "BEiTV2Head", "embed_dims": 16, "num_embed": 16}, "target_generator": gen}


def batch(views: int = 2, second: int = 16, n: int = 4) -> Masked:
    torch.manual_seed(0)
    images = torch.rand(n, 1, 16, 16) * 255
    pictures = [images, torch.nn.functional.interpolate(images, size=second)][:views]
    mask = torch.zeros(n, 4, 4, dtype=torch.bool)
    mask[:, 1:3, 1:3] = True
    return Masked(pictures if views > 1 else images, mask)


@pytest.mark.parametrize("version", [1, 2])
def test_random_tokenizer_is_refused_unless_allowed(version: int, tmp_path: Any) -> None:
    model = build_model({"model": tiny_beit(version)})
    gen = model.target_generator
    assert not gen.training and not any(p.requires_grad for p in gen.parameters())
    with pytest.raises(PretrainError, match="random weights") as err:
        model.train()  # what the trainer does before the first step
    assert "Pretrained" in (err.value.hint or "") and "allow_random_init" in (err.value.hint or "")
    with pytest.raises(PretrainError, match="random weights"):
        model.loss(batch(second=8 if version == 1 else 16))
    # A Pretrained rule on the tokenizer (the converted checkpoint) makes it usable...
    path = tmp_path / "tokenizer.safetensors"
    save_file({k: v.contiguous() for k, v in gen.state_dict().items()}, str(path))
    spec = tiny_beit(version)
    spec["target_generator"]["init"] = [{"type": "Pretrained", "checkpoint": str(path)}]
    loaded = build_model({"model": spec})
    loaded.train()
    assert loaded.target_generator.weights_loaded and not loaded.target_generator.training
    # ... and so does loading a whole model checkpoint (resuming, pretrain eval).
    again = build_model({"model": tiny_beit(version)})
    again.load_state_dict(loaded.state_dict())
    again.train()
    # A checkpoint without the tokenizer's weights does not count.
    partial = build_model({"model": tiny_beit(version)})
    partial.load_state_dict({k: v for k, v in loaded.state_dict().items() if "target_generator" not in k},
                            strict=False)
    with pytest.raises(PretrainError, match="random weights"):
        partial.train()


@pytest.mark.parametrize("version", [1, 2])
def test_beit_trains_on_masked_patches_and_keeps_the_tokenizer_frozen(version: int) -> None:
    torch.manual_seed(0)
    model = build_model({"model": tiny_beit(version, allow_random_init=True)})
    model.train()
    data = batch(second=8 if version == 1 else 16)
    before = {k: v.clone() for k, v in model.target_generator.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=5e-3)
    losses = []
    for _ in range(40):
        out = model.loss(data)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.6 * losses[0]
    assert (set(out) == {"loss", "loss_1", "loss_2"}) == (version == 2)
    assert all(torch.equal(before[k], v) for k, v in model.target_generator.state_dict().items())
    # Unmasked patches carry no loss: changing the images there leaves the targets' loss alone.
    model.eval()
    assert model.extract_feat(data)[0].shape[0] == 4
    with pytest.raises(PretrainError, match="mask"):
        model.loss(batch(views=2).images)
    with pytest.raises(PretrainError, match="2 images per sample"):
        model.loss(batch(views=1))


def test_beit_checks_the_tokenizer_grid() -> None:
    model = build_model({"model": tiny_beit(1, allow_random_init=True)})
    with pytest.raises(PretrainError, match="second_size"):
        model.loss(batch(second=16))  # DALL-E halves here: a 16-px second picture gives 8x8 tokens


def test_relative_position_index_matches_beit_and_swin_formulas() -> None:
    index = relative_position_index((2, 3), with_cls_token=True)
    rows = (2 * 2 - 1) * (2 * 3 - 1)
    assert index.shape == (7, 7) and index[0, 0] == rows + 2 and index[0, 1] == rows and index[1, 0] == rows + 1
    assert index[1, 1] == index[2, 2] == (2 - 1) * (2 * 3 - 1) + (3 - 1)  # zero offset
    assert int(index[1:, 1:].max()) == rows - 1 and index[1:, 1:].unique().numel() == rows


def test_pretraining_checkpoint_loads_into_beitvit_for_fine_tuning() -> None:
    torch.manual_seed(0)
    pre = BEiTPretrainViT(arch=TINY_VIT, img_size=16, patch_size=4)
    state = {k: v for k, v in pre.state_dict().items() if k not in ("mask_token", "ln1.weight", "ln1.bias")}
    fine = BEiTViT(arch=TINY_VIT, img_size=24, patch_size=4, use_rel_pos_bias=True)  # bigger grid: resized
    missing = fine.load_state_dict(state, strict=False)
    assert sorted(missing.missing_keys) == ["ln2.bias", "ln2.weight"] and not missing.unexpected_keys
    assert fine.layers[0].attn.relative_position_bias_table.shape == ((2 * 6 - 1) ** 2 + 3, 2)
    assert fine(torch.randn(2, 3, 24, 24))[0].shape == (2, 16)
    with pytest.raises(PretrainError, match="patch grid"):
        fine(torch.randn(1, 3, 16, 16))
    same = BEiTViT(arch=TINY_VIT, img_size=16, patch_size=4)
    same.load_state_dict(state, strict=False)
    shared = pre.rel_pos_bias.relative_position_bias_table
    assert all(torch.equal(layer.attn.relative_position_bias_table, shared) for layer in same.layers)
    assert same.get_layer_depth("backbone.layers.1.gamma_1", "backbone.") == (2, 5)


def test_maskfeat_and_simmim_losses_count_masked_patches_only() -> None:
    torch.manual_seed(0)
    maskfeat = build_from_spec("model", {
        "type": "MaskFeat", "mean": [127.5], "std": [127.5],
        "backbone": {"type": "MaskFeatViT", "arch": TINY_VIT, "img_size": 16, "patch_size": 4, "in_channels": 1},
        "neck": {"type": "LinearNeck", "in_channels": 16, "out_channels": 36, "norm": "none"},
        "head": {"type": "MIMHead", "loss": {"type": "PixelReconstructionLoss", "criterion": "L2"}},
        "target_generator": {"type": "HOGGenerator", "pool": 2, "patch_size": 4, "gaussian_window": 16}})
    simmim = build_from_spec("model", {
        "type": "SimMIM", "mean": [127.5], "std": [127.5],
        "backbone": {"type": "SimMIMSwinTransformer", "img_size": 16, "patch_size": 4, "window_size": 2,
                     "in_channels": 1, "out_indices": [1],
                     "arch": {"embed_dims": 8, "depths": [1, 1], "num_heads": [1, 2]}},
        "neck": {"type": "SimMIMLinearDecoder", "in_channels": 16, "encoder_stride": 8, "out_channels": 1},
        "head": {"type": "SimMIMHead", "patch_size": 4, "loss": {"type": "PixelReconstructionLoss",
                                                               "criterion": "L1", "channel": 1}}})
    data = batch(views=1)
    for model in (maskfeat, simmim):
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
        first = model.loss(data)["loss"].item()
        for _ in range(20):
            loss = model.loss(data)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert model.loss(data)["loss"].item() < first
    simmim.eval()
    out = simmim.reconstruct(data)
    assert out["mask"].shape == (4, 1, 16, 16) and float(out["mask"].mean()) == 0.25
    unmasked = out["mask"] == 0
    assert torch.allclose(out["reconstruction"][unmasked.expand_as(out["input"])],
                          out["input"][unmasked.expand_as(out["input"])], atol=1e-3)
    wrong = Masked(data.images, torch.zeros(4, 2, 2, dtype=torch.bool))
    with pytest.raises(PretrainError, match="patch grid"):
        maskfeat.loss(wrong)


def test_pixel_loss_divides_by_the_mask_as_given() -> None:
    pred, target = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2] = 1
    loss = PixelReconstructionLoss(criterion="L1", channel=3)(pred, target, mask)
    assert float(loss) == pytest.approx(1.0)  # SimMIM's mean over the masked pixels' values


# ----------------------------------------------------------------------------- tokenizer converter

def _unilm_names(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our VQKD keys rewritten with BEiT v2's (microsoft/unilm) published layout, plus its extras."""
    out = {}
    for original, value in ours.items():
        key = re.sub(r"encoder\.layers\.(\d+)\.ln([12])", r"encoder.blocks.\1.norm\2", original)
        key = re.sub(r"encoder\.layers\.(\d+)\.ffn\.layers\.0\.0", r"encoder.blocks.\1.mlp.fc1", key)
        key = re.sub(r"encoder\.layers\.(\d+)\.ffn\.layers\.1", r"encoder.blocks.\1.mlp.fc2", key)
        key = re.sub(r"encoder\.layers\.(\d+)\.attn", r"encoder.blocks.\1.attn", key)
        key = key.replace("encoder.patch_embed.projection", "encoder.patch_embed.proj").replace(
            "encoder.ln1.", "encoder.norm.")
        out[key] = value
    extra = ["decoder.blocks.0.norm1.weight", "decode_task_layer.0.weight", "quantize.embedding.embed_avg",
             "quantize.embedding.cluster_size", "scaling_layer.shift"]
    return out | {k: torch.empty(1, device="meta") for k in extra}


def test_tokenizer_converter_maps_published_layouts() -> None:
    with torch.device("meta"):
        ours = VQKD(encoder_config=VQKD_BASE_ENCODER).state_dict()
        dalle = DALLEEncoder().state_dict()
    assert set(convert(_unilm_names(ours), source="beit", arch="vqkd")) == set(ours)
    assert set(convert({f"target_generator.{k}": v for k, v in ours.items()}, source="mmpretrain",
                       arch="vqkd")) == set(ours)
    assert set(convert(dalle, source="mmpretrain", arch="dalle")) == set(dalle)
    assert find_converter("beit", "dall-e")[0] == "beit"
    truncated = dict(ours)
    truncated.pop("quantize.embedding.weight")
    with pytest.raises(WeightConversionError, match="missing: quantize.embedding.weight"):
        convert(truncated, source="mmpretrain", arch="vqkd")
    with pytest.raises(WeightConversionError, match="not understood"):
        convert({**dalle, "blocks.extra.conv.weight": torch.empty(1)}, source="beit", arch="dalle")
    with pytest.raises(WeightConversionError, match="cannot convert"):
        convert(dalle, source="beit", arch="cae")


def test_vqkd_rejects_unsupported_encoder_settings() -> None:
    from pretrain.spec.validate import ValidationContext

    ctx = ValidationContext()
    bad = copy.deepcopy(VQKD_ENCODER) | {"norm_cfg": {"type": "BN"}, "out_type": "cls_token", "foo": 1}
    ctx.component("target_generator", {"type": "VQKD", "encoder_config": bad}, "model.target_generator")
    text = " ".join(str(i) for i in ctx.issues)
    assert "norm_cfg" in text and "foo" in text
