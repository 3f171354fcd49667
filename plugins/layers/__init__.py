"""Building blocks shared by the built-in components, public for plugin authors too.

``from pretrain_builtins.layers import DropPath, TransformerEncoderLayer`` gives a
third-party backbone the same blocks (and state-dict key layouts, which follow
MMCV/MMPretrain) as the built-ins. One factory per concern: activations by name
(:func:`build_activation`), (N, C) normalisations (:func:`build_norm1d`).
"""

from __future__ import annotations

from pretrain_builtins.layers.activation import ActCfg, ActName, build_activation
from pretrain_builtins.layers.backbone_utils import (
    FrozenStagesMixin,
    first_issue_error,
    freeze,
    index_issues,
    inherit_args_doc,
    maybe_checkpoint,
    normalise_indices,
    set_norm_eval,
    signed_index_issues,
)
from pretrain_builtins.layers.conv import (
    BNCfg,
    Conv2dAdaptivePadding,
    ConvBNAct,
    ConvCfg,
    ConvType,
    SELayer,
    build_conv2d,
    make_divisible,
)
from pretrain_builtins.layers.drop import DropPath, drop_path
from pretrain_builtins.layers.mbconv import EdgeResidual, MBConv
from pretrain_builtins.layers.norm import GRN, LayerNorm2d, NormName, apply_norm, build_norm1d
from pretrain_builtins.layers.transformer import (
    FFN,
    LN_EPS,
    LayerScale,
    MultiheadAttention,
    PatchEmbed,
    TransformerEncoderLayer,
    is_square,
    pair,
    resize_pos_embed,
)

__all__ = [
    "FFN",
    "GRN",
    "LN_EPS",
    "ActCfg",
    "ActName",
    "BNCfg",
    "Conv2dAdaptivePadding",
    "ConvBNAct",
    "ConvCfg",
    "ConvType",
    "DropPath",
    "EdgeResidual",
    "FrozenStagesMixin",
    "LayerNorm2d",
    "LayerScale",
    "MBConv",
    "MultiheadAttention",
    "NormName",
    "PatchEmbed",
    "SELayer",
    "TransformerEncoderLayer",
    "apply_norm",
    "build_activation",
    "build_conv2d",
    "build_norm1d",
    "drop_path",
    "first_issue_error",
    "freeze",
    "index_issues",
    "inherit_args_doc",
    "is_square",
    "make_divisible",
    "maybe_checkpoint",
    "normalise_indices",
    "pair",
    "resize_pos_embed",
    "set_norm_eval",
    "signed_index_issues",
]
