"""Linear neck: optional global pooling, then fc -> norm -> activation.

Provenance: MMPretrain ``models/necks/linear_neck.py`` (used by MaskFeat and
linear projections in self-supervised recipes). Only the last feature of the
input tuple is used, as in MMPretrain.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseNeck
from pretrain_builtins.layers import ActName, NormName, apply_norm, build_activation, build_norm1d
from pretrain_builtins.necks.gap import GlobalAveragePooling

__all__ = ["LinearNeck"]


class LinearNeck(BaseNeck):
    """Project the last backbone feature with a linear layer (+ optional norm and activation).

    Args:
        in_channels: Channels of the input feature.
        out_channels: Channels of the output feature.
        gap_dim: Global average pooling before the fc: 0 for none (the input is
            already (N, C)), 1/2/3 for (N, C, L) / (N, C, H, W) / (N, C, D, H, W) inputs.
        norm: Normalisation after the fc (BN1d, SyncBN or LN), or ``none`` (TOML has no null;
            MMPretrain's ``norm_cfg=None``, as MaskFeat uses).
        act: Activation after the norm, or none.

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {"in_channels": 16, "out_channels": 8}
    #: One sample's shape for the conformance kit: LinearNeck takes pooled vectors.
    example_input: ClassVar[tuple[int, ...]] = (16,)

    def __init__(
        self,
        *,
        in_channels: Annotated[int, Field(gt=0)],
        out_channels: Annotated[int, Field(gt=0)],
        gap_dim: Literal[0, 1, 2, 3] = 0,
        norm: NormName | Literal["none"] | None = "BN1d",
        act: ActName | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.gap: nn.Module = nn.Identity() if gap_dim == 0 else GlobalAveragePooling(dim=gap_dim)
        self.fc = nn.Linear(in_channels, out_channels)
        self.norm: nn.Module = nn.Identity() if norm in (None, "none") else build_norm1d(norm, out_channels)
        self.act: nn.Module = nn.Identity() if act is None else build_activation(act)

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Return ``(out,)`` computed from ``inputs[-1]``.

        Args:
            inputs: Backbone (or previous neck) features; the last one is used.

        """
        if not isinstance(inputs, tuple | list):
            raise TypeError(f"LinearNeck expects a tuple of tensors, got {type(inputs).__name__}")
        x = self.gap(inputs[-1])  # (N, C_in)
        x = self.fc(x)  # (N, C_out)
        x = apply_norm(self.norm, x)
        return (self.act(x),)
