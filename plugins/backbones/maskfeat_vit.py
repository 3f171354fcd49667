"""MaskFeat encoder: a ViT whose masked patch embeddings are replaced by a learned mask token.

Provenance: Wei et al., 2022, "Masked Feature Prediction for Self-Supervised Visual
Pre-Training" (arXiv:2112.09133); MMPretrain's ``MaskFeatViT``
(``mmpretrain/models/selfsup/maskfeat.py``). Unlike MAE every token goes through the
encoder, masked or not. Keys are ``VisionTransformer``'s plus ``mask_token``, so the
encoder loads into a ``VisionTransformer`` for fine-tuning (drop ``mask_token`` with a
``key_map``). Differences (``docs/differences.md``): the masked forward returns a
one-element tuple (the backbone contract) rather than a bare tensor, the position
embedding is interpolated for other input sizes in the masked path too, and
``in_channels`` is a field (MMPretrain fixes 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from pretrain_builtins.backbones.vision_transformer import InterpolateMode, OutType, VisionTransformer
from pretrain_builtins.layers import replace_masked

__all__ = ["MaskFeatViT", "trunc_normal_init"]


def trunc_normal_init(module: nn.Module, std: float = 0.02) -> None:
    """MaskFeat's/SimMIM's ``_init_weights``: truncated-normal Linear/Conv (zero Linear bias), LayerNorm 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class MaskFeatViT(VisionTransformer):
    """ViT for MaskFeat pretraining: masked patches become a learned mask token, all tokens encoded.

    ``forward(x, mask)`` with ``mask`` bool (B, H/p, W/p) (True = masked) returns
    ``(tokens,)``, tokens (B, 1 + L, C) after the final norm, cls token first;
    ``forward(x)`` (``mask = None``) is the plain ViT forward (``out_type`` etc.).

    Args:
        arch: ViT preset name (``b``, ``l``, ``deit-tiny``, ...) or a table with integer
            ``embed_dims``, ``num_layers``, ``num_heads``, ``feedforward_channels``.
        img_size: Input size the position embedding is built for (int or [H, W]).
        patch_size: Square patch size in pixels.
        in_channels: Image channels.
        out_indices: Layers output by the unmasked forward (negatives count from the end).
        drop_rate: Dropout after the position embedding, the projections and in the MLPs.
        drop_path_rate: Stochastic depth, rising linearly to this value over the layers.
        final_norm: Apply a LayerNorm after the last layer.
        out_type: Output format of the unmasked forward (``raw`` by default).
        interpolate_mode: How the position embedding is resized for other grids.

    """

    #: MMPretrain's MaskFeatViT init: all in :meth:`post_init_weights`.
    default_init: ClassVar[list[dict[str, Any]]] = []
    example_config: ClassVar[dict[str, Any]] = {
        "arch": {"embed_dims": 16, "num_layers": 2, "num_heads": 2, "feedforward_channels": 32},
        "img_size": 16, "patch_size": 4,
    }

    def __init__(
        self,
        *,
        arch: str | dict[str, int] = "b",
        img_size: Annotated[int, Field(gt=0)] | tuple[int, int] = 224,
        patch_size: Annotated[int, Field(gt=0)] = 16,
        in_channels: Annotated[int, Field(gt=0)] = 3,
        out_indices: int | Sequence[int] = -1,
        drop_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        drop_path_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        final_norm: bool = True,
        out_type: OutType = "raw",
        interpolate_mode: InterpolateMode = "bicubic",
    ) -> None:
        super().__init__(
            arch=arch, img_size=img_size, patch_size=patch_size, in_channels=in_channels, out_indices=out_indices,
            drop_rate=drop_rate, drop_path_rate=drop_path_rate, final_norm=final_norm, out_type=out_type,
            with_cls_token=True, interpolate_mode=interpolate_mode,
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims))
        self.num_patches = self.patch_resolution[0] * self.patch_resolution[1]

    def post_init_weights(self) -> None:
        """MMPretrain's init: truncated-normal tokens, position embedding, Linear and Conv; LayerNorm 1/0."""
        assert self.cls_token is not None
        for param in (self.cls_token, self.mask_token, self.pos_embed):
            nn.init.trunc_normal_(param, std=0.02)
        trunc_normal_init(self)

    def example_inputs(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """Conformance-kit input: images and a random half-masked patch grid (so the mask token trains)."""
        h, w = self.img_size
        return torch.randn(batch_size, self.in_channels, h, w), torch.rand(batch_size, *self.patch_resolution) < 0.5

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, ...]:  # type: ignore[override]
        """``(tokens (B, 1 + L, C),)`` with masked patches replaced, or the plain ViT output."""
        if mask is None:
            return super().forward(x)
        b = x.shape[0]
        tokens, grid = self.patch_embed(x)  # (B, L, C)
        tokens = replace_masked(tokens, mask, self.mask_token)
        assert self.cls_token is not None
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1)  # (B, 1 + L, C)
        tokens = self.drop_after_pos(tokens + self.pos_embed_for(grid))
        for layer in self.layers:
            tokens = self.run_layer(layer, tokens)
        if self.final_norm:
            tokens = self.ln1(tokens)
        return (tokens,)
