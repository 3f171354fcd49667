"""EfficientNetV2 backbone (S/M/L/XL and B0..B3).

Paper: Tan & Le, 2021, "EfficientNetV2: Smaller Models and Faster Training"
(arXiv:2104.00298).

Provenance: MMPretrain ``mmpretrain/models/backbones/efficientnet_v2.py``: the
``arch_settings`` table, layer names (``layers.0`` stem, ``layers.{1..}`` stages of
conv / Fused-MBConv (``EdgeResidual``) / MBConv blocks, the last layer a 1×1 conv),
defaults (TensorFlow "same" padding on strided convs, BatchNorm eps 1e-3, Swish).
With ``conv_cfg = {type = "Conv2d"}`` S/M/L compute exactly torchvision's
``efficientnet_v2_*`` (S: 21,458,488 parameters with a 1000-class head); the defaults
match timm's ``tf_efficientnetv2_*``. Differences (``docs/differences.md``): with a
plain ``Conv2d`` the stem is padded (MMPretrain's stem then has ``padding=0`` and
shrinks every map by one pixel); ``out_indices`` equal to the number of layers is a
validation error (MMPretrain admits it and returns nothing for it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseBackbone
from pretrain_builtins.layers import (
    ActCfg,
    ActName,
    BNCfg,
    ConvBNAct,
    ConvCfg,
    DropPath,
    EdgeResidual,
    FrozenStagesMixin,
    MBConv,
    first_issue_error,
    freeze,
    make_divisible,
    normalise_indices,
    signed_index_issues,
)

__all__ = ["EfficientNetV2", "EfficientNetV2Arch", "EnhancedConvModule"]

EfficientNetV2Arch = Literal[
    "s", "small", "m", "medium", "l", "large", "xl", "b0", "b1", "b2", "b3"
]

#: Per stage: repeat, kernel, stride, expand ratio, in channels, out channels, SE ratio,
#: block type (-2 final conv, -1 conv with shortcut, 0 Fused-MBConv, 1 MBConv).
StageCfg = tuple[int, int, int, float, int, int, float, int]

_S: list[StageCfg] = [
    (2, 3, 1, 1, 24, 24, 0.0, -1), (4, 3, 2, 4, 24, 48, 0.0, 0), (4, 3, 2, 4, 48, 64, 0.0, 0),
    (6, 3, 2, 4, 64, 128, 0.25, 1), (9, 3, 1, 6, 128, 160, 0.25, 1),
    (15, 3, 2, 6, 160, 256, 0.25, 1), (1, 1, 1, 1, 256, 1280, 0.0, -2),
]
_M: list[StageCfg] = [
    (3, 3, 1, 1, 24, 24, 0.0, -1), (5, 3, 2, 4, 24, 48, 0.0, 0), (5, 3, 2, 4, 48, 80, 0.0, 0),
    (7, 3, 2, 4, 80, 160, 0.25, 1), (14, 3, 1, 6, 160, 176, 0.25, 1),
    (18, 3, 2, 6, 176, 304, 0.25, 1), (5, 3, 1, 6, 304, 512, 0.25, 1),
    (1, 1, 1, 1, 512, 1280, 0.0, -2),
]
_L: list[StageCfg] = [
    (4, 3, 1, 1, 32, 32, 0.0, -1), (7, 3, 2, 4, 32, 64, 0.0, 0), (7, 3, 2, 4, 64, 96, 0.0, 0),
    (10, 3, 2, 4, 96, 192, 0.25, 1), (19, 3, 1, 6, 192, 224, 0.25, 1),
    (25, 3, 2, 6, 224, 384, 0.25, 1), (7, 3, 1, 6, 384, 640, 0.25, 1),
    (1, 1, 1, 1, 640, 1280, 0.0, -2),
]

#: MMPretrain's ``EfficientNetV2.arch_settings``.
ARCH_SETTINGS: dict[str, list[StageCfg]] = {
    "s": _S, "small": _S, "m": _M, "medium": _M, "l": _L, "large": _L,
    "xl": [
        (4, 3, 1, 1, 32, 32, 0.0, -1), (8, 3, 2, 4, 32, 64, 0.0, 0), (8, 3, 2, 4, 64, 96, 0.0, 0),
        (16, 3, 2, 4, 96, 192, 0.25, 1), (24, 3, 1, 6, 192, 256, 0.25, 1),
        (32, 3, 2, 6, 256, 512, 0.25, 1), (8, 3, 1, 6, 512, 640, 0.25, 1),
        (1, 1, 1, 1, 640, 1280, 0.0, -2),
    ],
    "b0": [
        (1, 3, 1, 1, 32, 16, 0.0, -1), (2, 3, 2, 4, 16, 32, 0.0, 0), (2, 3, 2, 4, 32, 48, 0.0, 0),
        (3, 3, 2, 4, 48, 96, 0.25, 1), (5, 3, 1, 6, 96, 112, 0.25, 1),
        (8, 3, 2, 6, 112, 192, 0.25, 1), (1, 1, 1, 1, 192, 1280, 0.0, -2),
    ],
    "b1": [
        (2, 3, 1, 1, 32, 16, 0.0, -1), (3, 3, 2, 4, 16, 32, 0.0, 0), (3, 3, 2, 4, 32, 48, 0.0, 0),
        (4, 3, 2, 4, 48, 96, 0.25, 1), (6, 3, 1, 6, 96, 112, 0.25, 1),
        (9, 3, 2, 6, 112, 192, 0.25, 1), (1, 1, 1, 1, 192, 1280, 0.0, -2),
    ],
    "b2": [
        (2, 3, 1, 1, 32, 16, 0.0, -1), (3, 3, 2, 4, 16, 32, 0.0, 0), (3, 3, 2, 4, 32, 56, 0.0, 0),
        (4, 3, 2, 4, 56, 104, 0.25, 1), (6, 3, 1, 6, 104, 120, 0.25, 1),
        (10, 3, 2, 6, 120, 208, 0.25, 1), (1, 1, 1, 1, 208, 1408, 0.0, -2),
    ],
    "b3": [
        (2, 3, 1, 1, 40, 16, 0.0, -1), (3, 3, 2, 4, 16, 40, 0.0, 0), (3, 3, 2, 4, 40, 56, 0.0, 0),
        (5, 3, 2, 4, 56, 112, 0.25, 1), (7, 3, 1, 6, 112, 136, 0.25, 1),
        (12, 3, 2, 6, 136, 232, 0.25, 1), (1, 1, 1, 1, 232, 1536, 0.0, -2),
    ],
}


class EnhancedConvModule(ConvBNAct):
    """Conv → BN → activation with an optional shortcut and stochastic depth (the first V2 stage).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size.
        stride: Convolution stride.
        has_skip: Add the input (needs stride 1 and equal channels).
        drop_path_rate: Stochastic depth of the residual branch.
        act: Activation name.
        bn_eps: BatchNorm epsilon.
        bn_momentum: BatchNorm momentum (PyTorch convention).

    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        has_skip: bool = False,
        drop_path_rate: float = 0.0,
        act: ActName = "Swish",
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, act=act, bn_eps=bn_eps,
            bn_momentum=bn_momentum,
        )
        if has_skip and (in_channels != out_channels or stride != 1):
            raise ValueError("has_skip needs stride 1 and in_channels == out_channels")
        self.has_skip = has_skip
        # Not a Sequential child: forward is explicit below.
        self.drop_path: nn.Module = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Conv → BN → act (B, C_out, H / s, W / s), plus ``x`` with ``has_skip``."""
        out = self.activate(self.bn(self.conv(x)))
        return self.drop_path(out) + x if self.has_skip else out


class EfficientNetV2(FrozenStagesMixin, BaseBackbone):
    """EfficientNetV2 backbone; by default returns the final 1×1 conv (1280 channels for S).

    Output 0 is the stem (stride 2), then one output per stage of the arch (S: a
    conv stage, two Fused-MBConv and three MBConv stages, strides 2, 4, 8, 16, 16, 32),
    the last one the final conv.

    Args:
        arch: ``s``/``small`` (stages of 2, 4, 4, 6, 9, 15 blocks, 24..256 channels),
            ``m``/``medium`` (3, 5, 5, 7, 14, 18, 5 blocks, 24..512), ``l``/``large``
            (4, 7, 7, 10, 19, 25, 7 blocks, 32..640), ``xl`` (4, 8, 8, 16, 24, 32, 8
            blocks, 32..640), or the small V2 models ``b0`` (16..192 channels), ``b1``
            (16..192, deeper), ``b2`` (16..208), ``b3`` (16..232).
        in_channels: Channels of the input images.
        drop_path_rate: Maximum stochastic-depth rate, rising linearly over the blocks.
        out_indices: Outputs to return (0 = stem, -1 = final conv), in increasing order.
        frozen_stages: Freeze (no grad, eval mode) outputs 0..N-1; 0 freezes nothing.
        conv_cfg: Convolution of the stem, strided blocks and final conv:
            ``{type = "Conv2dAdaptivePadding"}`` pads like TensorFlow "same" (MMPretrain's
            default, timm's ``tf_efficientnetv2_*``), ``{type = "Conv2d"}`` symmetrically
            (torchvision).
        norm_cfg: BatchNorm settings, e.g. ``{type = "BN", eps = 1e-3, momentum = 0.1}``.
        act_cfg: Activation of every conv but the linear projections, e.g. ``{type = "Swish"}``.
        norm_eval: Keep every BatchNorm in eval mode during training.
        with_cp: Activation checkpointing in every (Fused-)MBConv block.

    """

    default_init: ClassVar[list[dict[str, Any]]] = [
        {"type": "Kaiming", "layer": ["Conv2d"]},
        {"type": "Constant", "val": 1, "layer": ["_BatchNorm", "GroupNorm"]},
    ]

    #: A small instance for ``pretrain.testing``.
    example_config: ClassVar[dict[str, Any]] = {"arch": "b0", "out_indices": [1, 3, -1]}

    arch_settings: ClassVar[dict[str, list[StageCfg]]] = ARCH_SETTINGS

    def __init__(
        self,
        *,
        arch: EfficientNetV2Arch = "s",
        in_channels: Annotated[int, Field(gt=0)] = 3,
        drop_path_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        out_indices: int | tuple[int, ...] = (-1,),
        frozen_stages: Annotated[int, Field(ge=0)] = 0,
        conv_cfg: ConvCfg | None = {"type": "Conv2dAdaptivePadding"},  # noqa: B006 - never mutated
        norm_cfg: BNCfg = {"type": "BN", "eps": 1e-3, "momentum": 0.1},  # noqa: B006 - never mutated
        act_cfg: ActCfg = {"type": "Swish"},  # noqa: B006 - never mutated
        norm_eval: bool = False,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        params = {"arch": arch, "out_indices": out_indices, "frozen_stages": frozen_stages}
        first_issue_error(type(self), type(self).spec_issues(params))
        settings = self.arch_settings[arch]
        self.arch = arch
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        conv_type = None if conv_cfg is None else conv_cfg["type"]
        act = act_cfg["type"]
        bn = {"bn_eps": float(norm_cfg.get("eps", 1e-5)), "bn_momentum": float(norm_cfg.get("momentum", 0.1))}

        in_ch = settings[0][4]
        self.layers = nn.ModuleList(
            [ConvBNAct(in_channels, in_ch, 3, stride=2, act=act, conv_type=conv_type, **bn)]
        )
        channels = [in_ch]
        stages = settings[:-1]
        total = sum(s[0] for s in stages)
        dpr = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        block_idx = 0
        for repeat, kernel, first_stride, expand_ratio, _, out_ch, se_ratio, block_type in stages:
            blocks: list[nn.Module] = []
            for i in range(repeat):
                stride = first_stride if i == 0 else 1
                if block_type == -1:
                    has_skip = stride == 1 and in_ch == out_ch
                    blocks.append(
                        EnhancedConvModule(
                            in_ch, out_ch, kernel, stride=stride, has_skip=has_skip,
                            drop_path_rate=dpr[block_idx] if has_skip else 0.0, act=act, **bn,
                        )
                    )
                else:
                    mid = int(in_ch * expand_ratio)
                    se = None
                    if block_type == 1 and se_ratio > 0:
                        se = make_divisible(mid // (expand_ratio / se_ratio), 1)
                    block_cls = EdgeResidual if block_type == 0 else MBConv
                    blocks.append(
                        block_cls(
                            in_ch, out_ch, mid, kernel_size=kernel, stride=stride, se_channels=se,
                            act=act, conv_type=conv_type if stride == 2 else None,
                            drop_path_rate=dpr[block_idx], with_cp=with_cp, **bn,
                        )
                    )
                in_ch = out_ch
                block_idx += 1
            self.layers.append(nn.Sequential(*blocks))
            channels.append(in_ch)
        last = settings[-1]
        self.layers.append(
            ConvBNAct(in_ch, last[5], last[1], stride=last[2], act=act, conv_type=conv_type, **bn)
        )
        channels.append(last[5])
        self.out_indices = normalise_indices(out_indices, len(self.layers))
        #: Channels of each returned feature map, in output order.
        self.out_channels = tuple(channels[i] for i in self.out_indices)
        #: Channels of the final conv.
        self.feat_dim = last[5]
        self._freeze_stages()

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """``out_indices`` and ``frozen_stages`` against the arch's number of outputs."""
        arch = params.get("arch", "s")
        if arch not in cls.arch_settings:
            return
        count = len(cls.arch_settings[arch]) + 1  # stem + stages + final conv
        yield from signed_index_issues("out_indices", params.get("out_indices", (-1,)), count, "output")
        frozen = int(params.get("frozen_stages", 0))
        if frozen > count:
            yield "frozen_stages", f"is {frozen}; EfficientNetV2-{arch} has {count} outputs, so use 0..{count}"

    def _freeze_stages(self) -> None:
        for i in range(self.frozen_stages):
            freeze(self.layers[i])

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Return the outputs of ``out_indices``; ``x`` is (B, C_in, H, W)."""
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)  # (B, C_i, H_i, W_i)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
