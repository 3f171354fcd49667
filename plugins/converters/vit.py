"""Convert torchvision / timm Vision Transformer state dicts to our ViT classifier keys.

Our ``VisionTransformer`` keeps MMPretrain's names (``patch_embed.projection``,
``layers.{i}.{ln1,attn.qkv,attn.proj,ln2,ffn.layers.0.0,ffn.layers.1}``, final
``ln1``) and ``VisionTransformerClsHead`` keeps ``layers.{pre_logits,head}``.

* torchvision ``vit_{b,l}_{16,32}``, ``vit_h_14``: ``class_token``, ``conv_proj``,
  ``encoder.pos_embedding``, ``encoder.layers.encoder_layer_{i}.{ln_1,
  self_attention.in_proj_*, self_attention.out_proj, ln_2, mlp.{0,3}}``
  (``mlp.linear_{1,2}`` in older releases), ``encoder.ln``, ``heads.{pre_logits,head}``.
  ``in_proj`` stacks q, k, v like our fused ``qkv``.
* timm ``vit_*``/``deit_*`` (plain layouts, ``.tag`` ignored): ``cls_token``,
  ``pos_embed``, ``patch_embed.proj``, ``norm_pre`` (→ ``pre_norm``),
  ``blocks.{i}.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2,
  ls2.gamma}``, ``norm`` (→ ``ln1``), ``fc_norm`` (→ ``ln2``: ``out_type =
  "avg_featmap"``, ``final_norm = false``), ``head``.
* ``--arch vit`` converts either layout without checking the size (custom models).

Registered as the ``vit`` entry point of ``pretrain.weight_converters``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pretrain.components import BaseWeightConverter
from pretrain_builtins.converters import (
    KeyRule,
    Source,
    WeightConversionError,
    remap,
    unsupported,
)

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["TIMM_RULES", "ViTConverter", "backbone_spec", "convert", "parse_arch"]

_SUPPORTED = {
    "torchvision": ["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14", "vit (any size)"],
    "timm": ["{vit,deit}_{tiny,small,base,large,huge}_patch{N}_{size}[_...][.tag]", "vit (any size)"],
}

#: Size word of a source name -> our ``arch`` preset (same four sizes).
_TV_SIZES = {"b": "base", "l": "large", "h": "huge"}
_TIMM_SIZES = {
    "tiny": "deit-tiny",  # 192 wide, 12 layers, 3 heads: timm's vit_tiny is DeiT-Ti
    "small": "deit-small",  # 384 wide: timm's vit_small is DeiT-S (our "small" is 768 x 8)
    "base": "base",
    "large": "large",
    "huge": "huge",
}
_TV_NAME = re.compile(r"vit_([blh])_(\d+)")
_TIMM_NAME = re.compile(r"(?:vit|deit)_(tiny|small|base|large|huge)_patch(\d+)_(\d+)(?:_[a-z0-9_]+)?")

_PARAM = r"(weight|bias)"

_TV_RULES = [
    KeyRule(r"class_token", "backbone.cls_token"),
    KeyRule(rf"conv_proj\.{_PARAM}", r"backbone.patch_embed.projection.\1"),
    KeyRule(r"encoder\.pos_embedding", "backbone.pos_embed"),
    KeyRule(rf"encoder\.layers\.encoder_layer_(\d+)\.ln_([12])\.{_PARAM}", r"backbone.layers.\1.ln\2.\3"),
    KeyRule(
        r"encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_(weight|bias)",
        r"backbone.layers.\1.attn.qkv.\2",
    ),
    KeyRule(
        rf"encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.{_PARAM}",
        r"backbone.layers.\1.attn.proj.\2",
    ),
    # torchvision >= 0.15: MLPBlock is (Linear, GELU, Dropout, Linear, Dropout) ...
    KeyRule(rf"encoder\.layers\.encoder_layer_(\d+)\.mlp\.0\.{_PARAM}", r"backbone.layers.\1.ffn.layers.0.0.\2"),
    KeyRule(rf"encoder\.layers\.encoder_layer_(\d+)\.mlp\.3\.{_PARAM}", r"backbone.layers.\1.ffn.layers.1.\2"),
    # ... older releases name the two Linears.
    KeyRule(
        rf"encoder\.layers\.encoder_layer_(\d+)\.mlp\.linear_1\.{_PARAM}",
        r"backbone.layers.\1.ffn.layers.0.0.\2",
    ),
    KeyRule(
        rf"encoder\.layers\.encoder_layer_(\d+)\.mlp\.linear_2\.{_PARAM}",
        r"backbone.layers.\1.ffn.layers.1.\2",
    ),
    KeyRule(rf"encoder\.ln\.{_PARAM}", r"backbone.ln1.\1"),
    # torchvision's `heads` Sequential uses our head's `layers` child names.
    KeyRule(rf"heads\.(head|pre_logits)\.{_PARAM}", r"head.layers.\1.\2"),
]

TIMM_RULES = [
    KeyRule(r"cls_token", "backbone.cls_token"),
    KeyRule(r"pos_embed", "backbone.pos_embed"),
    KeyRule(rf"patch_embed\.proj\.{_PARAM}", r"backbone.patch_embed.projection.\1"),
    KeyRule(rf"norm_pre\.{_PARAM}", r"backbone.pre_norm.\1"),
    KeyRule(rf"blocks\.(\d+)\.norm([12])\.{_PARAM}", r"backbone.layers.\1.ln\2.\3"),
    KeyRule(rf"blocks\.(\d+)\.attn\.(qkv|proj)\.{_PARAM}", r"backbone.layers.\1.attn.\2.\3"),
    KeyRule(r"blocks\.(\d+)\.ls1\.gamma", r"backbone.layers.\1.attn.gamma1.weight"),
    KeyRule(rf"blocks\.(\d+)\.mlp\.fc1\.{_PARAM}", r"backbone.layers.\1.ffn.layers.0.0.\2"),
    KeyRule(rf"blocks\.(\d+)\.mlp\.fc2\.{_PARAM}", r"backbone.layers.\1.ffn.layers.1.\2"),
    KeyRule(r"blocks\.(\d+)\.ls2\.gamma", r"backbone.layers.\1.ffn.gamma2.weight"),
    KeyRule(rf"norm\.{_PARAM}", r"backbone.ln1.\1"),
    # timm's avg-pool models normalise the pooled token: our `avg_featmap` + `ln2`.
    KeyRule(rf"fc_norm\.{_PARAM}", r"backbone.ln2.\1"),
    KeyRule(rf"head\.{_PARAM}", r"head.layers.head.\1"),
]


def parse_arch(arch: str, source: str) -> tuple[str, int, int] | None:
    """Return ``(our arch preset, patch_size, img_size)``, or ``None`` for the generic ``vit``.

    Raises:
        WeightConversionError: Not a ViT name this converter knows for ``source``.

    """
    if source not in _SUPPORTED:
        raise unsupported("vit", source, arch, _SUPPORTED)
    if arch == "vit":
        return None
    if source == "torchvision":
        match = _TV_NAME.fullmatch(arch)
        if match:
            return _TV_SIZES[match.group(1)], int(match.group(2)), 224
    else:
        match = _TIMM_NAME.fullmatch(arch.split(".", 1)[0])
        if match:
            return _TIMM_SIZES[match.group(1)], int(match.group(2)), int(match.group(3))
    raise unsupported("vit", source, arch, _SUPPORTED)


def backbone_spec(arch: str, source: Source) -> dict[str, Any] | None:
    """The backbone table whose keys the converted weights fill (for the CLI summary).

    ``None`` for the generic ``vit``: its size (heads in particular) is not in the name.
    """
    parsed = parse_arch(arch, source)
    if parsed is None:
        return None
    preset, patch, size = parsed
    return {"type": "VisionTransformer", "arch": preset, "patch_size": patch, "img_size": size}


def _check_size(out: Mapping[str, Tensor], preset: str, source: str, arch: str) -> None:
    from pretrain_builtins.backbones.vision_transformer import VisionTransformer

    want = VisionTransformer.arch_settings(preset)
    pos = out.get("backbone.pos_embed")
    width = int(pos.shape[-1]) if pos is not None else want["embed_dims"]
    depth = len({key.split(".")[2] for key in out if key.startswith("backbone.layers.")})
    if (width, depth) != (want["embed_dims"], want["num_layers"]):
        raise WeightConversionError(
            f"vit converter: --arch {arch} means {want['num_layers']} layers of width "
            f"{want['embed_dims']}, but the {source} state dict has {depth} layers of width {width}.",
            hint="Pass the architecture the weights belong to, or --arch vit for a custom size.",
        )


def convert(
    state_dict: Mapping[str, Tensor], *, source: Source, arch: str
) -> dict[str, Tensor]:
    """Map a torchvision or timm ViT state dict to ``backbone.*``/``head.layers.*`` keys.

    The result loads into an ``ImageClassifier`` whose backbone is a
    ``VisionTransformer`` of the same size (``qkv_bias = true``; ``pre_norm = true``
    if the source has ``norm_pre``; ``out_type = "avg_featmap"`` and
    ``final_norm = false`` if it has ``fc_norm``) and whose head is a
    ``VisionTransformerClsHead`` (``hidden_dim`` set if it has ``pre_logits``).
    A state dict without classifier keys gives backbone keys only.

    Args:
        state_dict: The source model's ``state_dict()``.
        source: ``torchvision`` or ``timm``.
        arch: ``vit_b_16`` ... (torchvision), ``vit_tiny_patch16_224`` ... (timm, tags
            ignored), or ``vit`` for any size; a named size is checked against the weights.

    Returns:
        Our classifier's keys (tensors shared, not copied).

    Raises:
        WeightConversionError: Unknown arch/source, keys this mapping does not cover
            (register/distillation tokens, q/k norms...), or a size that contradicts ``arch``.

    """
    parsed = parse_arch(arch, source)
    rules = _TV_RULES if source == "torchvision" else TIMM_RULES
    out = remap(state_dict, rules, family="vit", source=source, arch=arch)
    if parsed is not None:
        _check_size(out, parsed[0], source, arch)
    return out


class ViTConverter(BaseWeightConverter):
    """torchvision ``vit_{b,l,h}_N``; timm ``vit_*``/``deit_*_patchN_S``; ``vit`` for any size."""

    architectures = {
        "torchvision": [_TV_NAME.pattern, r"vit"],
        "timm": [_TIMM_NAME.pattern, r"vit"],
    }

    def convert(self, state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
        """See :func:`convert`."""
        return convert(state_dict, source=source, arch=arch)  # type: ignore[arg-type]

    def backbone_spec(self, source: str, arch: str) -> dict[str, Any] | None:
        """See :func:`backbone_spec`."""
        return backbone_spec(arch, source)  # type: ignore[arg-type]
