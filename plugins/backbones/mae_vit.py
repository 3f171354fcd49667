"""MAE encoder: a ViT that sees only a random subset of the patches.

Provenance: He et al., 2022, "Masked Autoencoders Are Scalable Vision Learners"
(arXiv:2111.06377); MMPretrain's ``MAEViT`` (``mmpretrain/models/selfsup/mae.py``)
and ``build_2d_sincos_position_embedding``
(``mmpretrain/models/utils/position_encoding.py``), which follow
``facebookresearch/mae/models_mae.py``. Deliberate differences (``docs/differences.md``):

* the number of kept patches is ``round(L·(1−r))`` (at least 1), not ``int(...)``,
  which under-counts through float error (L=10, r=0.9 keeps 0 patches there);
* ``forward(x, mask=False)`` really skips masking (MMPretrain's
  ``if mask is None or False`` masks anyway);
* any image size divisible by the patch size works: the fixed sin-cos embedding is
  recomputed for the actual grid (rectangular grids keep the row/column layout);
* ``final_norm = false`` is honoured in the masked path (MMPretrain calls ``ln1``
  unconditionally and crashes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from pretrain_builtins.backbones.vision_transformer import InterpolateMode, OutType, VisionTransformer

__all__ = [
    "MAEViT",
    "build_2d_sincos_position_embedding",
    "init_mae_weights",
    "num_kept_patches",
    "sincos_pos_embed_for",
]


def build_2d_sincos_position_embedding(
    grid: int | tuple[int, int],
    embed_dims: int,
    temperature: float = 10000.0,
    cls_token: bool = False,
    device: torch.device | str | None = None,
) -> Tensor:
    """Fixed 2-D sin-cos position embedding (1, [1 +] H·W, C).

    For token (row, col) of a row-major grid the channels are
    ``[sin(row·ω), cos(row·ω), sin(col·ω), cos(col·ω)]`` with
    ``ω_d = temperature^(−d / (C/4))``; for square grids this equals MMPretrain's
    table exactly. The cls slot, if any, is zeros.

    Args:
        grid: Patch grid, ``S`` or ``(H, W)``.
        embed_dims: Channels; must be divisible by 4.
        temperature: Frequency base.
        cls_token: Prepend a zero embedding for the cls token.
        device: Where to build the tensor.

    Returns:
        A float32 tensor (1, [1 +] H·W, C).

    """
    h, w = (grid, grid) if isinstance(grid, int) else grid
    if embed_dims % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dims divisible by 4, got {embed_dims}")
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device),
        torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    pos_dim = embed_dims // 4
    omega = torch.arange(pos_dim, dtype=torch.float32, device=device) / pos_dim
    omega = 1.0 / (temperature**omega)  # (C/4,)
    out_r = rows.flatten()[:, None] * omega[None, :]  # (H·W, C/4)
    out_c = cols.flatten()[:, None] * omega[None, :]  # (H·W, C/4)
    emb = torch.cat([out_r.sin(), out_r.cos(), out_c.sin(), out_c.cos()], dim=1)[None]  # (1, H·W, C)
    if cls_token:
        emb = torch.cat([torch.zeros(1, 1, embed_dims, device=device), emb], dim=1)
    return emb


def sincos_pos_embed_for(stored: Tensor, built_grid: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """``stored`` (1, 1 + H·W, C) if ``grid`` is the one it was built for, else a fresh sin-cos table.

    The fresh table (cls slot included) lives on ``stored``'s device, in its dtype.
    """
    if tuple(grid) == tuple(built_grid):
        return stored
    table = build_2d_sincos_position_embedding(
        grid, stored.shape[-1], cls_token=True, device=stored.device
    )
    return table.to(stored.dtype)


def init_mae_weights(module: nn.Module) -> None:
    """MAE's ``_init_weights`` over ``module``: Xavier-uniform Linear (zero bias), LayerNorm 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def num_kept_patches(num_patches: int, mask_ratio: float) -> int:
    """Patches the encoder sees: ``round(L·(1−r))`` (halves round up), clamped to [1, L].

    A tiny tolerance absorbs float error (``10 * (1 - 0.9) = 0.9999999999999998``).
    """
    kept = math.floor(num_patches * (1.0 - mask_ratio) + 0.5 + 1e-9)
    return max(1, min(num_patches, kept))


class MAEViT(VisionTransformer):
    """Vision Transformer encoder for MAE pretraining (random masking, fixed sin-cos positions).

    ``forward(x)`` (``mask=True``) patchifies, adds the fixed position embedding,
    keeps ``round(L·(1−mask_ratio))`` random patches per sample, prepends the cls
    token and runs the encoder, returning ``(latent (B, 1 + kept, C), mask (B, L)
    with 1 = removed, ids_restore (B, L))``. ``forward(x, mask=False)`` (or
    ``None``) is a plain ViT forward returning a tuple per ``out_indices``.

    Args:
        arch: ViT preset name (``b``, ``l``, ``h``, ``deit-tiny``...) or a table with
            integer ``embed_dims``, ``num_layers``, ``num_heads``, ``feedforward_channels``.
        img_size: Input size the stored position embedding is built for (int or [H, W]);
            other sizes divisible by the patch size also work.
        patch_size: Square patch size in pixels.
        in_channels: Image channels.
        out_indices: Layers output by the unmasked forward (negatives count from the end).
        drop_rate: Dropout after the position embedding, the projections and in the MLPs.
        drop_path_rate: Stochastic depth, rising linearly to this value over the layers.
        qkv_bias: Whether the attention ``qkv`` projection has a bias.
        final_norm: Apply a LayerNorm after the last layer.
        out_type: Output format of the unmasked forward (``raw`` by default).
        interpolate_mode: Resize mode used when a checkpoint's position embedding is loaded
            into a model of another size.
        layer_scale_init_value: LayerScale init value; 0 disables LayerScale.
        mask_ratio: Fraction of patches removed, in [0, 1).
        with_cp: Activation checkpointing of every layer while training.

    """

    #: MMPretrain's MAEViT init: all in :meth:`post_init_weights`.
    default_init: ClassVar[list[dict[str, Any]]] = []

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
        qkv_bias: bool = True,
        final_norm: bool = True,
        out_type: OutType = "raw",
        interpolate_mode: InterpolateMode = "bicubic",
        layer_scale_init_value: Annotated[float, Field(ge=0.0)] = 0.0,
        mask_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.75,
        with_cp: bool = False,
    ) -> None:
        problems = list(self._mae_check(arch, img_size, patch_size, mask_ratio))
        if problems:
            raise ValueError("; ".join(f"{name}: {msg}" for name, msg in problems))
        super().__init__(
            arch=arch,
            img_size=img_size,
            patch_size=patch_size,
            in_channels=in_channels,
            out_indices=out_indices,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            qkv_bias=qkv_bias,
            final_norm=final_norm,
            out_type=out_type,
            with_cls_token=True,
            interpolate_mode=interpolate_mode,
            layer_scale_init_value=layer_scale_init_value,
            with_cp=with_cp,
        )
        # The position embedding is fixed during pretraining (still a parameter, as in
        # MMPretrain, so checkpoints carry it and the published parameter count holds).
        self.pos_embed.requires_grad_(False)
        self.mask_ratio = mask_ratio
        self.num_patches = self.patch_resolution[0] * self.patch_resolution[1]

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """ViT checks, plus: sin-cos needs width % 4 == 0; the mask must remove a patch."""
        issues = list(super().spec_issues({**params, "with_cls_token": True}))
        if any(name == "arch" for name, _ in issues):
            return issues
        issues += cls._mae_check(
            params.get("arch", "b"),
            params.get("img_size", 224),
            params.get("patch_size", 16),
            params.get("mask_ratio", 0.75),
        )
        return issues

    @classmethod
    def _mae_check(
        cls, arch: Any, img_size: Any, patch_size: int, mask_ratio: float
    ) -> Iterable[tuple[str, str]]:
        try:
            dims = cls.arch_settings(arch)["embed_dims"]
        except (KeyError, TypeError, ValueError):
            return  # reported by the ViT checks
        if dims % 4:
            yield "arch", f"embed_dims ({dims}) must be divisible by 4 for the sin-cos position embedding"
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if h % patch_size or w % patch_size:
            yield "img_size", f"{img_size} is not divisible by patch_size {patch_size}"
            return
        length = (h // patch_size) * (w // patch_size)
        if mask_ratio > 0 and num_kept_patches(length, mask_ratio) == length:
            yield "mask_ratio", (
                f"{mask_ratio} masks none of the {length} patches of a {h}x{w} image "
                "(nothing to reconstruct); raise it or use smaller patches"
            )

    # ------------------------------------------------------------------ weights

    def post_init_weights(self) -> None:
        """MMPretrain's MAE init: sin-cos positions, Xavier everywhere, cls token N(0, 0.02)."""
        self.pos_embed.data.copy_(
            build_2d_sincos_position_embedding(self.patch_resolution, self.embed_dims, cls_token=True)
        )
        w = self.patch_embed.projection.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a Linear over flattened patches
        assert self.cls_token is not None
        nn.init.normal_(self.cls_token, std=0.02)
        init_mae_weights(self)

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """The stored embedding for the built grid, else the exact sin-cos table for ``grid``."""
        return sincos_pos_embed_for(self.pos_embed, self.patch_resolution, grid)

    # ------------------------------------------------------------------ masking

    def random_masking(self, x: Tensor, mask_ratio: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Keep a random subset of tokens per sample (argsort of uniform noise).

        Args:
            x: Patch tokens (B, L, C), without the cls token.
            mask_ratio: Fraction to remove; defaults to ``self.mask_ratio``.

        Returns:
            ``(kept (B, K, C), mask (B, L) with 1 = removed, ids_restore (B, L))`` where
            ``K = num_kept_patches(L, mask_ratio)`` and ``ids_restore`` undoes the shuffle.

        """
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        b, length, c = x.shape
        keep = num_kept_patches(length, ratio)
        noise = torch.rand(b, length, device=x.device)  # (B, L)
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the first `keep` are kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, L)
        ids_keep = ids_shuffle[:, :keep]  # (B, K)
        kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, c))  # (B, K, C)
        mask = torch.ones(b, length, device=x.device, dtype=x.dtype)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # back to patch order
        return kept, mask, ids_restore

    def forward(  # type: ignore[override]
        self, x: Tensor, mask: bool | None = True
    ) -> tuple[Tensor, ...]:
        """Masked encoding ``(latent, mask, ids_restore)``, or plain ViT features.

        Args:
            x: Images (B, C, H, W), H and W divisible by the patch size when masking.
            mask: ``True`` masks; ``False`` or ``None`` runs the plain ViT forward.

        """
        if mask is None or mask is False:
            return super().forward(x)
        b = x.shape[0]
        tokens, grid = self.patch_embed(x)  # (B, L, C)
        pos = self.pos_embed_for(grid)  # (1, 1 + L, C)
        tokens = tokens + pos[:, 1:]
        tokens, patch_mask, ids_restore = self.random_masking(tokens)  # (B, K, C)
        assert self.cls_token is not None
        cls = (self.cls_token + pos[:, :1]).expand(b, -1, -1)  # (B, 1, C)
        out = self.drop_after_pos(torch.cat((cls, tokens), dim=1))  # (B, 1 + K, C)
        for layer in self.layers:
            out = self.run_layer(layer, out)
        if self.final_norm:
            out = self.ln1(out)
        return out, patch_mask, ids_restore
