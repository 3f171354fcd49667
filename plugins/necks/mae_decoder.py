"""MAE decoder: restores the full token sequence and predicts every patch's pixels.

Provenance: He et al., 2022, "Masked Autoencoders Are Scalable Vision Learners"
(arXiv:2111.06377); MMPretrain's ``MAEPretrainDecoder``
(``mmpretrain/models/necks/mae_neck.py``), same state-dict keys. Differences: the
fixed sin-cos decoder position embedding is recomputed for grids other than the
built one (any image size), and ``forward`` also accepts the encoder's
``(latent, mask, ids_restore)`` tuple as it comes out of ``MAEViT``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseNeck
from pretrain_builtins.backbones.mae_vit import (
    build_2d_sincos_position_embedding,
    init_mae_weights,
    sincos_pos_embed_for,
)
from pretrain_builtins.layers import LN_EPS, TransformerEncoderLayer

__all__ = ["MAEPretrainDecoder"]


class MAEPretrainDecoder(BaseNeck):
    """MAE decoder: linear embed, mask tokens, unshuffle, Transformer blocks, pixel predictor.

    ``forward(latent, ids_restore)`` takes the encoder output (B, 1 + K, C_enc)
    (cls token first) and ``ids_restore`` (B, L); it returns a one-element tuple
    with the predictions (B, L, ``predict_feature_dim``) for every patch in the
    original order (cls slot dropped).

    Args:
        num_patches: Patches of the images the stored decoder position embedding is
            built for: an int (a square grid) or [rows, cols]. Other grids are computed
            on the fly.
        patch_size: Patch size in pixels (sets the default prediction size).
        in_chans: Image channels (sets the default prediction size).
        embed_dim: Width of the encoder output.
        decoder_embed_dim: Width of the decoder; divisible by 4 and by ``decoder_num_heads``.
        decoder_depth: Number of decoder Transformer blocks.
        decoder_num_heads: Attention heads of the decoder blocks.
        mlp_ratio: MLP hidden width as a multiple of ``decoder_embed_dim``.
        predict_feature_dim: Output width per patch; default ``patch_size² · in_chans``.

    """

    #: MMPretrain's init: all in :meth:`post_init_weights`.
    default_init: ClassVar[list[dict[str, Any]]] = []
    #: A small instance for the conformance kit (``pretrain.testing``).
    example_config: ClassVar[dict[str, Any]] = {
        "num_patches": 16, "patch_size": 4, "embed_dim": 16, "decoder_embed_dim": 16,
        "decoder_depth": 1, "decoder_num_heads": 2,
    }

    def __init__(
        self,
        *,
        num_patches: Annotated[int, Field(gt=0)] | tuple[int, int] = 196,
        patch_size: Annotated[int, Field(gt=0)] = 16,
        in_chans: Annotated[int, Field(gt=0)] = 3,
        embed_dim: Annotated[int, Field(gt=0)] = 1024,
        decoder_embed_dim: Annotated[int, Field(gt=0)] = 512,
        decoder_depth: Annotated[int, Field(ge=0, le=256)] = 8,
        decoder_num_heads: Annotated[int, Field(gt=0)] = 16,
        mlp_ratio: Annotated[float, Field(gt=0)] = 4.0,
        predict_feature_dim: Annotated[int, Field(gt=0)] | None = None,
    ) -> None:
        super().__init__()
        problems = list(self._check(num_patches, decoder_embed_dim, decoder_num_heads))
        if problems:
            raise ValueError("; ".join(f"{name}: {msg}" for name, msg in problems))
        self.grid = self._grid(num_patches)
        self.num_patches = self.grid[0] * self.grid[1]
        self.decoder_embed_dim = decoder_embed_dim
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        # Fixed (not learnt) but a parameter, as in MMPretrain (counted, saved).
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, self.num_patches + 1, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            TransformerEncoderLayer(
                decoder_embed_dim, decoder_num_heads, int(mlp_ratio * decoder_embed_dim), qkv_bias=True
            )
            for _ in range(decoder_depth)
        )
        self.ln1 = nn.LayerNorm(decoder_embed_dim, eps=LN_EPS)  # MMPretrain's `decoder_norm`
        if predict_feature_dim is None:
            predict_feature_dim = patch_size**2 * in_chans
        self.decoder_pred = nn.Linear(decoder_embed_dim, predict_feature_dim, bias=True)

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """Sin-cos needs ``decoder_embed_dim % 4 == 0``; heads must divide the width."""
        return cls._check(
            params.get("num_patches", 196),
            params.get("decoder_embed_dim", 512),
            params.get("decoder_num_heads", 16),
        )

    @classmethod
    def _check(cls, num_patches: Any, dims: int, heads: int) -> Iterable[tuple[str, str]]:
        if isinstance(num_patches, int) and math.isqrt(num_patches) ** 2 != num_patches:
            yield "num_patches", (
                f"{num_patches} is not a square number; give the grid as [rows, cols]"
            )
        if dims % 4:
            yield "decoder_embed_dim", f"{dims} must be divisible by 4 (sin-cos position embedding)"
        if dims % heads:
            yield "decoder_num_heads", f"{heads} does not divide decoder_embed_dim {dims}"

    @staticmethod
    def _grid(num_patches: int | tuple[int, int]) -> tuple[int, int]:
        if isinstance(num_patches, int):
            side = math.isqrt(num_patches)
            return side, side
        return int(num_patches[0]), int(num_patches[1])

    @property
    def decoder_norm(self) -> nn.LayerNorm:
        """The final LayerNorm (MMPretrain's name for ``ln1``)."""
        return self.ln1

    def post_init_weights(self) -> None:
        """MMPretrain's init: sin-cos positions, mask token N(0, 0.02), Xavier Linear, LN 1/0."""
        self.decoder_pos_embed.data.copy_(
            build_2d_sincos_position_embedding(self.grid, self.decoder_embed_dim, cls_token=True)
        )
        nn.init.normal_(self.mask_token, std=0.02)
        init_mae_weights(self)

    def pos_embed_for(self, length: int, grid: tuple[int, int] | None) -> Tensor:
        """Decoder position embedding (1, 1 + L, C) for ``L`` patches laid out as ``grid``."""
        if grid is None:
            if length == self.num_patches:
                grid = self.grid
            else:
                side = math.isqrt(length)
                if side * side != length:
                    raise ValueError(
                        f"{length} patches do not form a square grid; pass grid=(rows, cols)"
                    )
                grid = (side, side)
        if grid[0] * grid[1] != length:
            raise ValueError(f"grid {grid} does not hold {length} patches")
        return sincos_pos_embed_for(self.decoder_pos_embed, self.grid, grid)

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        """MAEViT-like input for the conformance kit: ``((latent, mask, ids_restore),)``."""
        keep = max(1, self.num_patches // 4)
        width = self.decoder_embed.in_features
        latent = torch.randn(batch_size, 1 + keep, width)
        ids_restore = torch.rand(batch_size, self.num_patches).argsort(dim=1)
        mask = (ids_restore >= keep).float()
        return ((latent, mask, ids_restore),)

    def forward(  # type: ignore[override]
        self,
        x: Tensor | tuple[Tensor, ...],
        ids_restore: Tensor | None = None,
        grid: tuple[int, int] | None = None,
    ) -> tuple[Tensor]:
        """Predict all patches from the visible-token encoding.

        Args:
            x: Encoder output (B, 1 + K, C_enc), or MAEViT's ``(latent, mask, ids_restore)``.
            ids_restore: (B, L) permutation undoing the encoder's shuffle.
            grid: (rows, cols) of the patch grid; needed only for non-square images
                of a size other than the built one.

        Returns:
            ``(pred,)``: per-patch predictions (B, L, predict_feature_dim).

        """
        if isinstance(x, tuple | list):
            x, ids_restore = x[0], x[-1]
        if ids_restore is None:
            raise TypeError("MAEPretrainDecoder.forward needs ids_restore")
        x = self.decoder_embed(x)  # (B, 1 + K, C)
        assert isinstance(x, Tensor)
        b, n, c = x.shape
        length = ids_restore.shape[1]
        mask_tokens = self.mask_token.expand(b, length + 1 - n, -1)  # (B, L - K, C)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)  # (B, L, C), shuffled order
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, c))  # unshuffle
        x = torch.cat([x[:, :1], patches], dim=1)  # (B, 1 + L, C)
        x = x + self.pos_embed_for(length, grid)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.ln1(x))  # (B, 1 + L, P)
        return (x[:, 1:],)  # drop the cls slot: (B, L, P)
