"""MoCo v2 projection neck: optional global pooling, then fc -> ReLU -> fc.

Provenance: Chen et al., 2020, "Improved Baselines with Momentum Contrastive
Learning" (arXiv:2003.04297); MMPretrain's ``MoCoV2Neck``
(``mmpretrain/models/necks/mocov2_neck.py``): same fields, same ``mlp.0``/``mlp.2``
state-dict keys, PyTorch's default Linear initialisation (MMPretrain's neck has no
``init_cfg``). Only the last feature of the input tuple is used (MMPretrain asserts a
one-element tuple).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseNeck

__all__ = ["MoCoV2Neck"]


class MoCoV2Neck(BaseNeck):
    """Two-layer MLP projector without normalisation: fc-ReLU-fc on the (pooled) last feature.

    Args:
        in_channels: Channels of the input feature.
        hid_channels: Width of the hidden layer.
        out_channels: Channels of the output (MoCo's ``feat_dim``).
        with_avg_pool: Global average pooling of an (N, C, H, W) input first.

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {"in_channels": 16, "hid_channels": 8, "out_channels": 4}
    #: PyTorch's default Linear init, as MMPretrain (no init rules).
    default_init: ClassVar[list[dict[str, Any]]] = []

    def __init__(
        self,
        *,
        in_channels: Annotated[int, Field(gt=0)],
        hid_channels: Annotated[int, Field(gt=0)],
        out_channels: Annotated[int, Field(gt=0)],
        with_avg_pool: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.with_avg_pool = with_avg_pool
        self.avgpool: nn.Module = nn.AdaptiveAvgPool2d((1, 1)) if with_avg_pool else nn.Identity()
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hid_channels), nn.ReLU(inplace=True), nn.Linear(hid_channels, out_channels)
        )

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Return ``(out,)`` (N, out_channels) computed from ``inputs[-1]``."""
        if not isinstance(inputs, tuple | list):
            raise TypeError(f"MoCoV2Neck expects a tuple of tensors, got {type(inputs).__name__}")
        x = inputs[-1]
        if self.with_avg_pool and x.dim() == 4:
            x = self.avgpool(x)  # (N, C, 1, 1)
        return (self.mlp(x.flatten(1)),)  # (N, out)
