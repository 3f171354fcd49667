"""SimMIM's linear decoder: a 1x1 convolution and a pixel shuffle back to image resolution.

Provenance: Xie et al., 2022, "SimMIM" (arXiv:2111.09886); MMPretrain's
``SimMIMLinearDecoder`` (``mmpretrain/models/necks/simmim_neck.py``), same keys
(``decoder.0``). Difference: ``out_channels`` is a field (MMPretrain fixes 3 colour channels).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseNeck

__all__ = ["SimMIMLinearDecoder"]


class SimMIMLinearDecoder(BaseNeck):
    """Reconstruct the image from the last feature map: (B, C, h, w) -> (B, out, h·s, w·s).

    Args:
        in_channels: Channels of the encoder's last feature map.
        encoder_stride: Total downsampling of the encoder (Swin: patch size · 8).
        out_channels: Image channels to reconstruct.

    """

    example_config: ClassVar[dict[str, Any]] = {"in_channels": 16, "encoder_stride": 2}

    def __init__(
        self,
        *,
        in_channels: Annotated[int, Field(gt=0)],
        encoder_stride: Annotated[int, Field(gt=0)],
        out_channels: Annotated[int, Field(gt=0)] = 3,
    ) -> None:
        super().__init__()
        self.in_channels, self.encoder_stride, self.out_channels = in_channels, encoder_stride, out_channels
        self.decoder = nn.Sequential(
            nn.Conv2d(in_channels, encoder_stride**2 * out_channels, kernel_size=1),
            nn.PixelShuffle(encoder_stride),
        )

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """``(image (B, out_channels, h·s, w·s),)`` from the last map of ``inputs``."""
        if not isinstance(inputs, tuple | list):
            raise TypeError(f"SimMIMLinearDecoder expects a tuple of feature maps, got {type(inputs).__name__}")
        return (self.decoder(inputs[-1]),)
