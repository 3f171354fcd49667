"""Building blocks shared by the built-in components, public for plugin authors too.

``from pretrain_builtins.layers import DropPath, TransformerEncoderLayer`` gives a
third-party backbone the same blocks (BEiT's relative-position attention, Swin's
window attention too) (and state-dict key layouts, which follow
MMCV/MMPretrain) as the built-ins. One factory per concern: activations by name
(:func:`build_activation`), (N, C) normalisations (:func:`build_norm1d`). Self-supervision
blocks: :class:`MomentumTeacher` (EMA teacher) and :class:`MemoryQueue` (MoCo's queue).
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
from pretrain_builtins.layers.momentum import MomentumTeacher, cosine_momentum
from pretrain_builtins.layers.norm import (
    GRN,
    GlobalBatchNorm1d,
    LayerNorm2d,
    NormName,
    apply_norm,
    build_norm1d,
    global_batch_norm,
)
from pretrain_builtins.layers.queue import MemoryQueue
from pretrain_builtins.layers.relative_position import (
    BEiTAttention,
    BEiTTransformerEncoderLayer,
    RelativePositionBias,
    relative_position_index,
    resize_relative_position_bias_table,
)
from pretrain_builtins.layers.transformer import (
    FFN,
    LN_EPS,
    LayerScale,
    MultiheadAttention,
    PatchEmbed,
    TransformerEncoderLayer,
    is_square,
    pair,
    replace_masked,
    resize_pos_embed,
)
from pretrain_builtins.layers.window_attention import (
    ShiftWindowMSA,
    WindowMSA,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

__all__ = [
    "FFN",
    "GRN",
    "LN_EPS",
    "ActCfg",
    "ActName",
    "BEiTAttention",
    "BEiTTransformerEncoderLayer",
    "BNCfg",
    "Conv2dAdaptivePadding",
    "ConvBNAct",
    "ConvCfg",
    "ConvType",
    "DropPath",
    "EdgeResidual",
    "FrozenStagesMixin",
    "GlobalBatchNorm1d",
    "LayerNorm2d",
    "LayerScale",
    "MBConv",
    "MemoryQueue",
    "MomentumTeacher",
    "MultiheadAttention",
    "NormName",
    "PatchEmbed",
    "RelativePositionBias",
    "SELayer",
    "ShiftWindowMSA",
    "TransformerEncoderLayer",
    "WindowMSA",
    "apply_norm",
    "build_activation",
    "build_conv2d",
    "build_norm1d",
    "cosine_momentum",
    "drop_path",
    "first_issue_error",
    "freeze",
    "global_batch_norm",
    "index_issues",
    "inherit_args_doc",
    "is_square",
    "make_divisible",
    "maybe_checkpoint",
    "normalise_indices",
    "pair",
    "relative_position_index",
    "replace_masked",
    "resize_pos_embed",
    "resize_relative_position_bias_table",
    "set_norm_eval",
    "shifted_window_mask",
    "signed_index_issues",
    "window_partition",
    "window_reverse",
]
