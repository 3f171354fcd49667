"""MobileNetV2 backbone.

Paper: Sandler et al., 2018, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks" (arXiv:1801.04381).

Provenance: MMPretrain ``mmpretrain/models/backbones/mobilenet_v2.py``. Layer
names (``conv1``, ``layer1``..``layer7`` of inverted residuals whose ``conv``
is a sequence of conv/bn/act units, ``conv2`` the final 1×1 conv) and the
output indexing (0..6 = ``layer1``..``layer7``, 7 = ``conv2``) are
MMPretrain's. With ``widen_factor=1`` the parameters are exactly torchvision's
``mobilenet_v2().features`` (2,223,872); see
``pretrain_builtins.converters.mobilenet`` for the key mapping. Difference:
``frozen_stages >= 0`` also puts the stem's BatchNorm in eval mode (MMPretrain
stops its gradients but keeps updating its running statistics).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseBackbone
from pretrain_builtins.layers import (
    ConvBNAct,
    FrozenStagesMixin,
    first_issue_error,
    freeze,
    index_issues,
    make_divisible,
    maybe_checkpoint,
)

__all__ = ["InvertedResidual", "MobileNetV2"]

#: Activations MobileNetV2 may use (MMPretrain's ``act_cfg``; ReLU6 by default).
MobileNetV2Act = Literal["ReLU6", "ReLU", "HSwish", "SiLU"]


class InvertedResidual(nn.Module):
    """Inverted residual: 1×1 expand → 3×3 depthwise → 1×1 linear projection.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the depthwise conv (1 or 2).
        expand_ratio: Hidden channels = ``round(in_channels * expand_ratio)``;
            with 1 there is no expansion conv.
        act: Activation after the expansion and depthwise convs.
        with_cp: Activation checkpointing.

    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int,
        expand_ratio: int,
        act: MobileNetV2Act = "ReLU6",
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.with_cp = with_cp
        self.use_res_connect = stride == 1 and in_channels == out_channels
        hidden = round(in_channels * expand_ratio)
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, act=act))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride=stride, groups=hidden, act=act),
            ConvBNAct(hidden, out_channels, 1, act=None),
        ]
        self.conv = nn.Sequential(*layers)

    def _inner_forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)  # (B, C_out, H / stride, W / stride)
        return x + out if self.use_res_connect else out

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` (B, C_in, H, W)."""
        return maybe_checkpoint(self._inner_forward, x, self.with_cp)


class MobileNetV2(FrozenStagesMixin, BaseBackbone):
    """MobileNetV2 backbone; output 7 is the final 1×1 conv (1280 channels at width 1).

    Outputs 0..6 are the seven inverted-residual stages (16, 24, 32, 64, 96,
    160, 320 channels × ``widen_factor``), 7 the final conv; strides
    2, 4, 8, 16, 16, 32, 32, 32.

    Args:
        widen_factor: Width multiplier of every layer (channels are rounded to
            multiples of 8; the last conv only grows, never shrinks below 1280).
        out_indices: Outputs to return, strictly increasing, each in 0..7.
        frozen_stages: Freeze (no grad, eval mode) the stem and stages 1..N;
            -1 freezes nothing, 0 only the stem. At most 7 (the final conv is
            never frozen).
        act: Activation of every conv except the linear projections.
        norm_eval: Keep every BatchNorm in eval mode during training.
        with_cp: Activation checkpointing in every block: less memory, slower.

    """

    default_init: ClassVar[list[dict[str, Any]]] = [
        {"type": "Kaiming", "layer": ["Conv2d"]},
        {"type": "Constant", "val": 1, "layer": ["_BatchNorm", "GroupNorm"]},
    ]

    #: A small instance for ``pretrain.testing``.
    example_config: ClassVar[dict[str, Any]] = {"widen_factor": 0.25, "out_indices": [2, 7]}

    #: Per stage: expand_ratio, channels, num_blocks, stride of the first block.
    arch_settings: ClassVar[tuple[tuple[int, int, int, int], ...]] = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(
        self,
        *,
        widen_factor: Annotated[float, Field(gt=0.0)] = 1.0,
        out_indices: tuple[int, ...] = (7,),
        frozen_stages: Annotated[int, Field(ge=-1, le=7)] = -1,
        act: MobileNetV2Act = "ReLU6",
        norm_eval: bool = False,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        params = {"out_indices": out_indices, "frozen_stages": frozen_stages}
        first_issue_error(type(self), type(self).spec_issues(params))
        self.widen_factor = widen_factor
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp

        in_ch = make_divisible(32 * widen_factor, 8)
        self.conv1 = ConvBNAct(3, in_ch, 3, stride=2, act=act)
        self.layers: list[str] = []
        channels: list[int] = []
        for i, (expand_ratio, channel, num_blocks, stride) in enumerate(self.arch_settings):
            out_ch = make_divisible(channel * widen_factor, 8)
            blocks = []
            for j in range(num_blocks):
                blocks.append(
                    InvertedResidual(
                        in_ch, out_ch, stride=stride if j == 0 else 1,
                        expand_ratio=expand_ratio, act=act, with_cp=with_cp,
                    )
                )
                in_ch = out_ch
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.layers.append(name)
            channels.append(out_ch)
        self.out_channel = int(1280 * widen_factor) if widen_factor > 1.0 else 1280
        self.conv2 = ConvBNAct(in_ch, self.out_channel, 1, act=act)
        self.layers.append("conv2")
        channels.append(self.out_channel)
        #: Channels of each returned feature map, in output order.
        self.out_channels = tuple(channels[i] for i in self.out_indices)
        self.feat_dim = self.out_channel
        self._freeze_stages()

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """``out_indices`` must select existing outputs (0..7) in order."""
        yield from index_issues(
            "out_indices", params.get("out_indices", (7,)), len(cls.arch_settings) + 1, "output"
        )
        frozen = int(params.get("frozen_stages", -1))
        if not -1 <= frozen <= len(cls.arch_settings):
            yield "frozen_stages", f"is {frozen}; use -1..{len(cls.arch_settings)}"

    def _freeze_stages(self) -> None:
        if self.frozen_stages >= 0:
            freeze(self.conv1)
        for i in range(1, self.frozen_stages + 1):
            freeze(getattr(self, f"layer{i}"))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Return the feature maps of ``out_indices``; ``x`` is (B, 3, H, W)."""
        x = self.conv1(x)  # (B, 32w, H/2, W/2)
        return self._forward_stages(x, self.layers)
