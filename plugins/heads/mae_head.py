"""MAE pretraining head: pixel targets from the input image, loss on masked patches.

Provenance: He et al., 2022 (arXiv:2111.06377); MMPretrain's ``MAEPretrainHead``
(``mmpretrain/models/heads/mae_head.py``). Differences: ``patchify``/``unpatchify``
handle rectangular images (MMPretrain asserts square ones), the head accepts an
``init`` like every component, and :meth:`MAEPretrainHead.reconstruct` turns
predictions back into images (undoing ``norm_pix`` with the target's statistics)
for visualisation.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from pretrain.components import BaseHead, LossRef, build_component

__all__ = ["MAEPretrainHead", "patchify", "unpatchify"]

_DEFAULT_LOSS: dict[str, Any] = {"type": "PixelReconstructionLoss", "criterion": "L2"}

#: Added to the per-patch variance before the square root when ``norm_pix`` (MAE's value).
NORM_PIX_EPS = 1e-6


def patchify(imgs: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, H/p · W/p, p·p·C), patches row-major, values ordered (p, q, c).

    Raises:
        ValueError: H or W is not divisible by ``patch_size``.

    """
    b, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, q, C) = MAE's 'nchpwq->nhwpqc'
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: Tensor, patch_size: int, channels: int, grid: tuple[int, int] | None = None) -> Tensor:
    """Inverse of :func:`patchify`: (B, L, p·p·C) -> (B, C, rows·p, cols·p).

    Args:
        x: Per-patch values.
        patch_size: Patch size ``p``.
        channels: Image channels ``C``.
        grid: (rows, cols); default a square grid (L must be a square number).

    """
    b, length, dim = x.shape
    p = patch_size
    if dim != p * p * channels:
        raise ValueError(f"patch vectors have {dim} values, expected {p}*{p}*{channels}")
    if grid is None:
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(f"{length} patches are not a square grid; pass grid=(rows, cols)")
        grid = (side, side)
    rows, cols = grid
    if rows * cols != length:
        raise ValueError(f"grid {grid} does not hold {length} patches")
    x = x.reshape(b, rows, cols, p, p, channels)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, rows, p, cols, q)
    return x.reshape(b, channels, rows * p, cols * p)


class MAEPretrainHead(BaseHead):
    """MAE head: target = patchified image (optionally per-patch normalised), masked loss.

    ``loss(pred, images, mask)``: ``pred`` (B, L, p²·C) from the decoder (or the
    decoder's one-element tuple), the (normalised) input ``images`` (B, C, H, W)
    and the encoder's ``mask`` (B, L, 1 = removed) -> ``{"loss": ...}``.
    ``predict`` returns the raw predictions flattened per sample;
    :meth:`reconstruct` turns them back into images.

    Args:
        loss: Reconstruction loss (receives ``pred``, ``target``, ``mask``).
        norm_pix: Normalise each target patch to zero mean and unit variance
            (MAE's ``norm_pix_loss``; improves representations).
        patch_size: Patch size in pixels (must equal the encoder's).
        in_channels: Image channels.

    """

    supplies_targets: ClassVar[frozenset[str]] = frozenset({"dense"})
    default_init: ClassVar[list[dict[str, Any]]] = []
    #: A small instance for the conformance kit (``pretrain.testing``).
    example_config: ClassVar[dict[str, Any]] = {"patch_size": 4, "norm_pix": True}
    #: ``in_channels`` is the image's channel count, not the width of the features
    #: coming in, so the validator's in_channels-vs-features shape check must skip it.
    shape_check_in_channels: ClassVar[bool] = False

    def __init__(
        self,
        *,
        loss: LossRef = _DEFAULT_LOSS,
        norm_pix: bool = False,
        patch_size: Annotated[int, Field(gt=0)] = 16,
        in_channels: Annotated[int, Field(gt=0)] = 3,
    ) -> None:
        super().__init__()
        self.loss_module = build_component("loss", loss)
        self.norm_pix = norm_pix
        self.patch_size = patch_size
        self.in_channels = in_channels

    def patchify(self, imgs: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, L, p²·C)."""
        if imgs.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels}-channel images, got {imgs.shape[1]}")
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """(B, L, p²·C) -> (B, C, H, W); ``grid`` = (rows, cols), default square."""
        return unpatchify(x, self.patch_size, self.in_channels, grid)

    def construct_target(self, images: Tensor) -> Tensor:
        """Patchified target (B, L, p²·C), per-patch normalised if ``norm_pix``."""
        target = self.patchify(images)
        if self.norm_pix:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased, as MAE
            target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
        return target

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        """Conformance-kit input: decoder output ``(pred,)`` and 2x2-patch images."""
        p, c = self.patch_size, self.in_channels
        pred = torch.randn(batch_size, 4, p * p * c)
        return ((pred,), torch.randn(batch_size, c, 2 * p, 2 * p))

    def loss(  # type: ignore[override]
        self, pred: Tensor | tuple[Tensor, ...], images: Tensor, mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Reconstruction loss of ``pred`` against ``images`` on masked patches.

        Args:
            pred: Decoder output (B, L, p²·C) (a one-element tuple is unwrapped).
            images: The encoder's input (B, C, H, W).
            mask: (B, L), 1 = masked (counted); ``None`` counts every patch.

        Returns:
            ``{"loss": ...}``.

        """
        if isinstance(pred, tuple | list):
            pred = pred[-1]
        target = self.construct_target(images)
        return {"loss": self.loss_module(pred, target, mask)}

    def predict(self, feats: Tensor | tuple[Tensor, ...]) -> Tensor:
        """Pixel predictions flattened per sample (B, L·p²·C) (normalised space if ``norm_pix``)."""
        pred = feats[-1] if isinstance(feats, tuple | list) else feats
        return pred.flatten(1)

    def reconstruct(self, pred: Tensor, images: Tensor) -> Tensor:
        """Predictions back as images (B, C, H, W) in the space of ``images``.

        With ``norm_pix`` each predicted patch is de-normalised with the mean and
        variance of the corresponding patch of ``images`` (as MAE's visualisation).
        """
        if self.norm_pix:
            target = self.patchify(images)
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            pred = pred * (var + NORM_PIX_EPS) ** 0.5 + mean
        p = self.patch_size
        return self.unpatchify(pred, (images.shape[-2] // p, images.shape[-1] // p))
