"""EfficientNet backbone (B0..B8, L2 and the EdgeTPU S/M/L variants).

Papers: Tan & Le, 2019, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks" (arXiv:1905.11946); Gupta & Tan, 2019, "EfficientNet-EdgeTPU".

Provenance: MMPretrain ``mmpretrain/models/backbones/efficientnet.py``: the
``layer_settings``/``arch_settings`` tables, ``model_scaling`` (width rounding to
multiples of 8, depth ``ceil``, groups of a stage merged when the next group starts
with stride 1), layer names (``layers.0`` stem, ``layers.{1..5}`` block groups,
``layers.6`` final 1×1 conv; blocks from :mod:`pretrain_builtins.layers.mbconv`),
defaults (TensorFlow "same" padding, BatchNorm eps 1e-3, Swish). With
``conv_cfg = {type = "Conv2d"}`` and ``norm_cfg = {type = "BN", eps = 1e-5}`` B0..B7
compute exactly torchvision's ``efficientnet_b*`` (B0: 5,288,548 parameters with a
1000-class head); the defaults match timm's TensorFlow ports (``tf_efficientnet_*``).
Differences (``docs/differences.md``): ``in_channels`` is a field (MMPretrain: always
3); ``out_indices``/``frozen_stages`` problems are validation errors.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseBackbone
from pretrain_builtins.layers import (
    ActCfg,
    BNCfg,
    ConvBNAct,
    ConvCfg,
    EdgeResidual,
    FrozenStagesMixin,
    MBConv,
    first_issue_error,
    freeze,
    index_issues,
    make_divisible,
)

__all__ = ["EfficientNet", "EfficientNetArch", "layer_settings", "model_scaling"]

EfficientNetArch = Literal["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "l2", "es", "em", "el"]

#: One block: kernel, out channels, SE ratio (0: none), stride, expand ratio,
#: block type (-1 plain conv, 0 MBConv, 1 EdgeResidual). MMPretrain's ``layer_settings``.
BlockCfg = list[int]

LAYER_SETTINGS: dict[str, list[list[BlockCfg]]] = {
    "b": [
        [[3, 32, 0, 2, 0, -1]],
        [[3, 16, 4, 1, 1, 0]],
        [[3, 24, 4, 2, 6, 0], [3, 24, 4, 1, 6, 0]],
        [[5, 40, 4, 2, 6, 0], [5, 40, 4, 1, 6, 0]],
        [[3, 80, 4, 2, 6, 0], [3, 80, 4, 1, 6, 0], [3, 80, 4, 1, 6, 0],
         [5, 112, 4, 1, 6, 0], [5, 112, 4, 1, 6, 0], [5, 112, 4, 1, 6, 0]],
        [[5, 192, 4, 2, 6, 0], [5, 192, 4, 1, 6, 0], [5, 192, 4, 1, 6, 0],
         [5, 192, 4, 1, 6, 0], [3, 320, 4, 1, 6, 0]],
        [[1, 1280, 0, 1, 0, -1]],
    ],
    "e": [
        [[3, 32, 0, 2, 0, -1]],
        [[3, 24, 0, 1, 3, 1]],
        [[3, 32, 0, 2, 8, 1], [3, 32, 0, 1, 8, 1]],
        [[3, 48, 0, 2, 8, 1], [3, 48, 0, 1, 8, 1], [3, 48, 0, 1, 8, 1], [3, 48, 0, 1, 8, 1]],
        [[5, 96, 0, 2, 8, 0], [5, 96, 0, 1, 8, 0], [5, 96, 0, 1, 8, 0], [5, 96, 0, 1, 8, 0],
         [5, 96, 0, 1, 8, 0], [5, 144, 0, 1, 8, 0], [5, 144, 0, 1, 8, 0], [5, 144, 0, 1, 8, 0],
         [5, 144, 0, 1, 8, 0]],
        [[5, 192, 0, 2, 8, 0], [5, 192, 0, 1, 8, 0]],
        [[1, 1280, 0, 1, 0, -1]],
    ],
}

#: arch -> (width factor, depth factor, resolution). MMPretrain's ``arch_settings``.
ARCH_SETTINGS: dict[str, tuple[float, float, int]] = {
    "b0": (1.0, 1.0, 224),
    "b1": (1.0, 1.1, 240),
    "b2": (1.1, 1.2, 260),
    "b3": (1.2, 1.4, 300),
    "b4": (1.4, 1.8, 380),
    "b5": (1.6, 2.2, 456),
    "b6": (1.8, 2.6, 528),
    "b7": (2.0, 3.1, 600),
    "b8": (2.2, 3.6, 672),
    "l2": (4.3, 5.3, 800),
    "es": (1.0, 1.0, 224),
    "em": (1.0, 1.1, 240),
    "el": (1.2, 1.4, 300),
}


def model_scaling(settings: list[list[BlockCfg]], width: float, depth: float) -> list[list[BlockCfg]]:
    """Scale a layer table by a width and a depth factor (MMPretrain's ``model_scaling``).

    Widths are rounded to multiples of 8; every group of equal-width blocks (inside
    the middle layers) gets ``ceil(depth * n)`` blocks (extra copies of its last
    block); a group whose first block has stride 1 is merged into the previous layer.
    """
    scaled = copy.deepcopy(settings)
    for layer in scaled:
        for block in layer:
            block[1] = make_divisible(block[1] * width, 8)
    groups: list[list[BlockCfg]] = []
    for layer in scaled[1:-1]:
        start = 0
        for i in range(1, len(layer) + 1):
            if i == len(layer) or layer[i][1] != layer[i - 1][1]:
                groups.append(layer[start:i])
                start = i
    merged: list[list[BlockCfg]] = [scaled[0]]
    for i, group in enumerate(groups):
        n = math.ceil(depth * len(group))
        blocks = group[:n] if n <= len(group) else copy.deepcopy(group) + [group[-1]] * (n - len(group))
        if blocks[0][3] == 1 and i != 0:
            merged[-1] = merged[-1] + copy.deepcopy(blocks)
        else:
            merged.append(copy.deepcopy(blocks))
    merged.append(scaled[-1])
    return merged


def layer_settings(arch: str) -> list[list[BlockCfg]]:
    """The scaled layer table of ``arch``: stem, block groups, final conv."""
    width, depth, _ = ARCH_SETTINGS[arch]
    family = "b" if arch == "l2" else arch[:1]
    return model_scaling(LAYER_SETTINGS[family], width, depth)


def _conv_type(conv_cfg: Mapping[str, Any] | None) -> Any:
    return None if conv_cfg is None else conv_cfg.get("type")


class EfficientNet(FrozenStagesMixin, BaseBackbone):
    """EfficientNet backbone; output 6 (the default) is the final 1×1 conv (1280 channels for B0).

    Outputs 0..6 are the stem (stride 2), five groups of MBConv blocks (EdgeResidual
    blocks in the EdgeTPU archs; strides 2, 4, 8, 16, 32) and the final conv.

    Args:
        arch: A preset (width factor, depth factor, resolution): ``b0`` (1.0, 1.0, 224),
            ``b1`` (1.0, 1.1, 240), ``b2`` (1.1, 1.2, 260), ``b3`` (1.2, 1.4, 300), ``b4``
            (1.4, 1.8, 380), ``b5`` (1.6, 2.2, 456), ``b6`` (1.8, 2.6, 528), ``b7`` (2.0, 3.1,
            600), ``b8`` (2.2, 3.6, 672), ``l2`` (4.3, 5.3, 800), or EdgeTPU ``es`` (1.0, 1.0,
            224), ``em`` (1.0, 1.1, 240), ``el`` (1.2, 1.4, 300), which are trained with
            ``act_cfg = {type = "ReLU"}``.
        in_channels: Channels of the input images.
        drop_path_rate: Maximum stochastic-depth rate, rising linearly over the blocks.
        out_indices: Outputs to return, strictly increasing, each in 0..6.
        frozen_stages: Freeze (no grad, eval mode) outputs 0..N-1; 0 freezes nothing.
        conv_cfg: Convolution of the stem, the strided/depthwise convs and the final
            conv: ``{type = "Conv2dAdaptivePadding"}`` pads like TensorFlow "same"
            (MMPretrain's default, timm's ``tf_efficientnet_*``), ``{type = "Conv2d"}``
            pads symmetrically (torchvision, timm's ``efficientnet_*``).
        norm_cfg: BatchNorm settings, e.g. ``{type = "BN", eps = 1e-3}`` (MMPretrain and
            TensorFlow); torchvision's weights use ``eps = 1e-5``.
        act_cfg: Activation of every conv but the linear projections, e.g. ``{type = "Swish"}``.
        norm_eval: Keep every BatchNorm in eval mode during training.
        with_cp: Activation checkpointing in every block: less memory, slower.

    """

    default_init: ClassVar[list[dict[str, Any]]] = [
        {"type": "Kaiming", "layer": ["Conv2d"]},
        {"type": "Constant", "val": 1, "layer": ["_BatchNorm", "GroupNorm"]},
    ]

    #: A small instance for ``pretrain.testing``.
    example_config: ClassVar[dict[str, Any]] = {"arch": "es", "out_indices": [2, 6]}

    arch_settings: ClassVar[dict[str, tuple[float, float, int]]] = ARCH_SETTINGS

    def __init__(
        self,
        *,
        arch: EfficientNetArch = "b0",
        in_channels: Annotated[int, Field(gt=0)] = 3,
        drop_path_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        out_indices: tuple[int, ...] = (6,),
        frozen_stages: Annotated[int, Field(ge=0)] = 0,
        conv_cfg: ConvCfg | None = {"type": "Conv2dAdaptivePadding"},  # noqa: B006 - never mutated
        norm_cfg: BNCfg = {"type": "BN", "eps": 1e-3},  # noqa: B006 - never mutated
        act_cfg: ActCfg = {"type": "Swish"},  # noqa: B006 - never mutated
        norm_eval: bool = False,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        params = {"arch": arch, "out_indices": out_indices, "frozen_stages": frozen_stages}
        first_issue_error(type(self), type(self).spec_issues(params))
        self.arch = arch
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        settings = layer_settings(arch)
        conv_type = _conv_type(conv_cfg)
        act = act_cfg["type"]
        bn = {"bn_eps": float(norm_cfg.get("eps", 1e-5)), "bn_momentum": float(norm_cfg.get("momentum", 0.1))}

        stem, last = settings[0][0], settings[-1][0]
        in_ch = make_divisible(stem[1], 8)
        self.layers = nn.ModuleList(
            [ConvBNAct(in_channels, in_ch, stem[0], stride=stem[3], act=act, conv_type=conv_type, **bn)]
        )
        channels = [in_ch]
        groups = settings[1:-1]
        total = sum(len(g) for g in groups)
        dpr = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        block_idx = 0
        for group in groups:
            blocks: list[nn.Module] = []
            for i, (kernel, width, se_ratio, stride, expand_ratio, block_type) in enumerate(group):
                out_ch = make_divisible(width, 8)
                common = {
                    "kernel_size": kernel, "stride": stride, "act": act, "conv_type": conv_type,
                    "drop_path_rate": dpr[block_idx], "with_cp": with_cp, **bn,
                }
                if block_type == 1:
                    # EdgeTPU: a repeated first-group block expands 4x and has no shortcut.
                    with_residual = not (i > 0 and expand_ratio == 3)
                    ratio = 4 if not with_residual else expand_ratio
                    mid = int(in_ch * ratio)
                    se = make_divisible(mid // (se_ratio * ratio), 1) if se_ratio > 0 else None
                    blocks.append(
                        EdgeResidual(in_ch, out_ch, mid, se_channels=se, with_residual=with_residual, **common)
                    )
                else:
                    mid = int(in_ch * expand_ratio)
                    se = make_divisible(mid // (expand_ratio * se_ratio), 1) if se_ratio > 0 else None
                    blocks.append(MBConv(in_ch, out_ch, mid, se_channels=se, **common))
                in_ch = out_ch
                block_idx += 1
            self.layers.append(nn.Sequential(*blocks))
            channels.append(in_ch)
        self.layers.append(
            ConvBNAct(in_ch, last[1], last[0], stride=last[3], act=act, conv_type=conv_type, **bn)
        )
        channels.append(last[1])
        #: Channels of each returned feature map, in output order.
        self.out_channels = tuple(channels[i] for i in self.out_indices)
        #: Channels of the final conv (MMPretrain's ``out_channels``).
        self.feat_dim = last[1]
        self._freeze_stages()

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """``out_indices`` in 0..6, increasing; ``frozen_stages`` in 0..7."""
        count = len(LAYER_SETTINGS["b"])
        yield from index_issues("out_indices", params.get("out_indices", (6,)), count, "output")
        frozen = int(params.get("frozen_stages", 0))
        if frozen > count:
            yield "frozen_stages", f"is {frozen}; EfficientNet has {count} outputs, so use 0..{count}"

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
