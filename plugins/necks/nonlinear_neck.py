"""Non-linear projection neck (MLP) of contrastive self-supervised methods.

Provenance: MMPretrain ``models/necks/nonlinear_neck.py`` (SimCLR, MoCo v2,
BYOL, SimSiam projectors): ``fc0 -> bn0 -> [relu -> fc_i -> bn_i] * (num_layers - 1)``,
the last norm optional and optionally non-affine.

Differences from MMPretrain: the norm defaults to ``BN1d`` (MMPretrain's SyncBN
default fails outside a process group, ``open-mmlab/mmselfsup#575``); ``SyncBN``
normalises over the global batch whenever training distributed (CUDA or CPU) and is a
local batch norm otherwise.
``num_layers`` must be at least 2 (with 1, MMPretrain silently outputs
``hid_channels`` and ignores ``out_channels``; use ``LinearNeck`` for one layer).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseNeck
from pretrain_builtins.layers import NormName, apply_norm, build_norm1d

__all__ = ["NonLinearNeck"]


class NonLinearNeck(BaseNeck):
    """MLP projector: fc-norm-[ReLU-fc-norm]×(num_layers-1) on the (pooled) last feature.

    Args:
        in_channels: Channels of the input feature.
        hid_channels: Width of the hidden layers.
        out_channels: Channels of the output.
        num_layers: Number of fc layers (at least 2).
        with_bias: Bias in the hidden fc layers.
        with_last_bn: Normalise the output.
        with_last_bn_affine: Learnable scale/shift in the last norm.
        with_last_bias: Bias in the last fc layer.
        with_avg_pool: Global average pooling of an (N, C, H, W) input first.
        norm: Normalisation (BN1d, SyncBN or LN); SyncBN uses the statistics of the
            global batch when training distributed, on any device.

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {"in_channels": 16, "hid_channels": 8, "out_channels": 4}

    default_init: ClassVar[list[dict[str, Any]]] = [
        # MMPretrain's rule; LayerNorm added so that norm="LN" is covered too (same values).
        {"type": "Constant", "val": 1, "layer": ["_BatchNorm", "GroupNorm", "LayerNorm"]}
    ]

    def __init__(
        self,
        *,
        in_channels: Annotated[int, Field(gt=0)],
        hid_channels: Annotated[int, Field(gt=0)],
        out_channels: Annotated[int, Field(gt=0)],
        num_layers: Annotated[int, Field(ge=2, le=256)] = 2,
        with_bias: bool = False,
        with_last_bn: bool = True,
        with_last_bn_affine: bool = True,
        with_last_bias: bool = False,
        with_avg_pool: bool = True,
        norm: NormName = "BN1d",
    ) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"NonLinearNeck num_layers must be >= 2, got {num_layers}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.with_avg_pool = with_avg_pool
        self.avgpool: nn.Module = nn.AdaptiveAvgPool2d((1, 1)) if with_avg_pool else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.fc0 = nn.Linear(in_channels, hid_channels, bias=with_bias)
        self.bn0 = build_norm1d(norm, hid_channels)
        # Names as in MMPretrain (fc1, bn1, ...) so converted checkpoints keep their keys.
        self.fc_names: list[str] = []
        self.bn_names: list[str | None] = []
        for i in range(1, num_layers):
            last = i == num_layers - 1
            width = out_channels if last else hid_channels
            self.add_module(f"fc{i}", nn.Linear(hid_channels, width, bias=with_last_bias if last else with_bias))
            self.fc_names.append(f"fc{i}")
            if not last or with_last_bn:
                affine = with_last_bn_affine if last else True
                self.add_module(f"bn{i}", build_norm1d(norm, width, affine=affine))
                self.bn_names.append(f"bn{i}")
            else:
                self.bn_names.append(None)

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Return ``(out,)`` (N, out_channels) computed from ``inputs[-1]``.

        Args:
            inputs: Backbone (or previous neck) features; the last one is used.

        """
        if not isinstance(inputs, tuple | list):
            raise TypeError(f"NonLinearNeck expects a tuple of tensors, got {type(inputs).__name__}")
        x = inputs[-1]
        if self.with_avg_pool and x.dim() == 4:
            x = self.avgpool(x)  # (N, C, 1, 1)
        x = x.flatten(1)  # (N, C)
        x = apply_norm(self.bn0, self.fc0(x))  # (N, hid)
        for fc_name, bn_name in zip(self.fc_names, self.bn_names, strict=True):
            x = getattr(self, fc_name)(self.relu(x))
            if bn_name is not None:
                x = apply_norm(getattr(self, bn_name), x)
        return (x,)  # (N, out)
