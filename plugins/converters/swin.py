"""Convert torchvision Swin Transformer (and old MMPretrain Swin) state dicts to our keys.

Our ``SwinTransformer`` keeps MMPretrain's names: ``patch_embed.{projection,norm}``,
``stages.{i}.blocks.{j}.{norm1, attn.w_msa.{qkv, proj, relative_position_bias_table,
relative_position_index}, norm2, ffn.layers.{0.0,1}}``, ``stages.{i}.downsample.{norm,
reduction}`` and ``norm3``; the classifier is ``GlobalAveragePooling`` + ``LinearClsHead``
(``head.fc``).

* torchvision ``swin_t``/``swin_s``/``swin_b``: ``features.0.{0,2}`` (conv, LayerNorm),
  ``features.{1,3,5,7}.{j}.{norm1, attn.*, norm2, mlp.{0,3}}``,
  ``features.{2,4,6}.{reduction,norm}`` (the patch merging after stage 0, 1, 2),
  ``norm``, ``head``. torchvision concatenates a 2x2 neighbourhood as
  ``[x(0,0), x(1,0), x(0,1), x(1,1)]`` (position-major) where MMCV's ``Unfold`` gives
  channel-major ``[c0(0,0), c0(0,1), c0(1,0), c0(1,1), c1(0,0), ...]``: the merging's
  LayerNorm and the columns of its reduction are permuted accordingly (the only
  converter that changes values rather than names; :func:`merge_permutation`).
* ``--arch swin`` converts a torchvision ``SwinTransformer`` of any size unchecked.
* MMPretrain ``swin-{tiny,small,base,large}`` checkpoints already use our keys; old
  ones (before its key version 2/3) name the last norm ``norm`` and store ``attn_mask``
  buffers, which this renames and drops, as MMPretrain's loader does.

Registered as the ``swin`` entry point of ``pretrain.weight_converters``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pretrain.components import BaseWeightConverter
from pretrain_builtins.converters import KeyRule, WeightConversionError, remap, unsupported

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["SwinConverter", "convert", "merge_permutation"]

_TV_NAME = re.compile(r"swin_([tsb])")
#: ``--arch swin``: any size (custom torchvision ``SwinTransformer``), not checked.
_ANY = "swin"
_MM_NAME = re.compile(r"swin[-_](tiny|small|base|large)(?:[-_].*)?")
_SIZES = {"t": "tiny", "s": "small", "b": "base"}
_SUPPORTED = {
    "torchvision": ["swin_t", "swin_s", "swin_b", "swin (any size)"],
    "mmpretrain": ["swin-{tiny,small,base,large}[-...]"],
}
_P = r"(weight|bias)"

#: torchvision ``features`` index of stage ``i``'s blocks and of the merging after stage ``i``.
_TV_STAGE = {"1": 0, "3": 1, "5": 2, "7": 3}
_TV_MERGE = {"2": 0, "4": 1, "6": 2}


def _block(match: re.Match[str]) -> str | None:
    stage = _TV_STAGE.get(match.group(1))
    if stage is None:
        return None
    rest = match.group(3)
    rest = re.sub(r"^attn\.", "attn.w_msa.", rest)
    rest = rest.replace("mlp.0.", "ffn.layers.0.0.").replace("mlp.3.", "ffn.layers.1.")
    return f"backbone.stages.{stage}.blocks.{match.group(2)}.{rest}"


def _merge(match: re.Match[str]) -> str | None:
    stage = _TV_MERGE.get(match.group(1))
    return None if stage is None else f"backbone.stages.{stage}.downsample.{match.group(2)}"


_TV_RULES = [
    KeyRule(rf"features\.0\.0\.{_P}", r"backbone.patch_embed.projection.\1"),
    KeyRule(rf"features\.0\.2\.{_P}", r"backbone.patch_embed.norm.\1"),
    KeyRule(
        r"features\.(\d)\.(\d+)\.((?:norm[12]\.|attn\.(?:qkv|proj)\.|mlp\.[03]\.)(?:weight|bias)"
        r"|attn\.relative_position_(?:bias_table|index))",
        _block,
    ),
    KeyRule(r"features\.(\d)\.((?:reduction\.weight)|(?:norm\.(?:weight|bias)))", _merge),
    KeyRule(rf"norm\.{_P}", r"backbone.norm3.\1"),
    KeyRule(rf"head\.{_P}", r"head.fc.\1"),
]

_MM_RULES = [
    KeyRule(r"(?:backbone\.)?stages\.\d+\.blocks\.\d+\.attn\.attn_mask", None),  # old buffers, rebuilt
    KeyRule(rf"backbone\.norm\.{_P}", r"backbone.norm3.\1"),  # before MMPretrain's key version 2
    KeyRule(r"((?:backbone|head|neck)\..+)", r"\1"),
]


def merge_permutation(channels: int) -> list[int]:
    """Our merged-feature index ``c·4 + 2·kh + kw`` -> torchvision's ``(kh + 2·kw)·C + c``."""
    return [(kh + 2 * kw) * channels + c for c in range(channels) for kh in (0, 1) for kw in (0, 1)]


def _permute_merging(out: dict[str, Tensor]) -> None:
    for key in list(out):
        if ".downsample." not in key:
            continue
        tensor = out[key]
        channels = tensor.shape[-1] // 4
        index = merge_permutation(channels)
        # reduction.weight (C_out, 4C): permute its columns; norm.weight/bias (4C,): the entries.
        out[key] = tensor[:, index] if key.endswith("reduction.weight") else tensor[index]


def parse_arch(arch: str, source: str) -> str | None:
    """Our arch preset for a source architecture name (None for the generic ``swin``).

    Raises:
        WeightConversionError: Not a Swin name this converter knows for ``source``.

    """
    key = BaseWeightConverter.arch_key(arch)
    if source == "torchvision" and key == _ANY:
        return None
    if source == "torchvision" and (match := _TV_NAME.fullmatch(key)):
        return _SIZES[match.group(1)]
    if source == "mmpretrain" and (match := _MM_NAME.fullmatch(key)):
        return match.group(1)
    raise unsupported("swin", source, arch, _SUPPORTED)


def convert(state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
    """Map a torchvision or MMPretrain Swin state dict to ``backbone.*``/``head.fc.*`` keys.

    The result loads into an ``ImageClassifier`` with a ``SwinTransformer`` of the same
    arch (``out_indices = [3]``), a ``GlobalAveragePooling`` neck and a ``LinearClsHead``.

    Raises:
        WeightConversionError: Unknown arch/source, keys the mapping does not cover, or a
            depth that contradicts ``arch``.

    """
    preset = parse_arch(arch, source)
    rules = _TV_RULES if source == "torchvision" else _MM_RULES
    out = remap(state_dict, rules, family="swin", source=source, arch=arch)
    if source == "torchvision":
        _permute_merging(out)
        for key in [k for k in out if k.endswith("relative_position_index") and out[k].dim() == 1]:
            side = math.isqrt(out[key].numel())
            out[key] = out[key].view(side, side)  # torchvision flattens the (N, N) index
    if preset is None:
        return out
    from pretrain_builtins.backbones.swin import ARCH_ZOO

    want = ARCH_ZOO[preset]["depths"]
    blocks = {tuple(k.split(".")[2:5:2]) for k in out if ".blocks." in k}
    depths = [len({b for s, b in blocks if s == str(i)}) for i in range(len(want))]
    if depths != list(want):
        raise WeightConversionError(
            f"swin converter: --arch {arch} means stage depths {want}, but the {source} state dict has {depths}.",
            hint="Pass the architecture the weights belong to (swin_t, swin_s, swin_b ...).",
        )
    return out


class SwinConverter(BaseWeightConverter):
    """torchvision ``swin_t``/``swin_s``/``swin_b``; MMPretrain ``swin-{tiny,small,base,large}`` checkpoints."""

    architectures = {"torchvision": [r"swin_[tsb]", _ANY], "mmpretrain": [_MM_NAME.pattern]}

    def convert(self, state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
        """See :func:`convert`."""
        return convert(state_dict, source=source, arch=arch)

    def backbone_spec(self, source: str, arch: str) -> dict[str, Any] | None:
        """``SwinTransformer`` of the named size (ImageNet's 224-pixel, window-7 models)."""
        preset = parse_arch(arch, source)
        return None if preset is None else {"type": "SwinTransformer", "arch": preset, "img_size": 224}
