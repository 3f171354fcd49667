"""Masked-image-modelling heads: a loss on masked positions (MaskFeat) or masked pixels (SimMIM).

Provenance: MMPretrain's ``MIMHead`` (``mmpretrain/models/heads/mim_head.py``) and
``SimMIMHead`` (``mmpretrain/models/heads/simmim_head.py``). Both own their loss and
return ``{"loss": ...}`` (MMPretrain returns the bare tensor).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from pretrain.components import BaseHead, LossRef, build_component

__all__ = ["MIMHead", "SimMIMHead"]


def _last(feats: Tensor | tuple[Tensor, ...] | list[Tensor]) -> Tensor:
    return feats[-1] if isinstance(feats, tuple | list) else feats


class MIMHead(BaseHead):
    """Loss between predicted and target features per patch, counted on masked patches.

    ``loss(pred, target, mask)``: ``pred`` and ``target`` (B, L, C) (a one-element tuple
    of ``pred`` is unwrapped), ``mask`` (B, L) or (B, h, w), True/1 = masked (None: all).

    Args:
        loss: The reconstruction loss (MaskFeat: ``PixelReconstructionLoss``, L2).

    """

    supplies_targets: ClassVar[frozenset[str]] = frozenset({"dense"})
    default_init: ClassVar[list[dict[str, Any]]] = []
    example_config: ClassVar[dict[str, Any]] = {"loss": {"type": "PixelReconstructionLoss", "criterion": "L2"}}

    def __init__(self, *, loss: LossRef) -> None:
        super().__init__()
        self.loss_module = build_component("loss", loss)

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        """Conformance-kit input: predictions ``(pred,)`` (B, 4, 6) and targets of the same shape."""
        return ((torch.randn(batch_size, 4, 6),), torch.randn(batch_size, 4, 6))

    def loss(  # type: ignore[override]
        self, pred: Tensor | tuple[Tensor, ...], target: Tensor, mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``{"loss": ...}``: the loss of ``pred`` against ``target`` on the masked patches."""
        pred = _last(pred)
        weight = None if mask is None else mask.reshape(mask.shape[0], -1).to(pred.dtype)  # (B, L)
        return {"loss": self.loss_module(pred, target, weight)}

    def predict(self, feats: Tensor | tuple[Tensor, ...]) -> Tensor:
        """The predictions flattened per sample (B, L·C)."""
        return _last(feats).flatten(1)


class SimMIMHead(BaseHead):
    """SimMIM's loss: reconstructed image vs input, counted on the pixels of masked patches.

    ``loss(pred, images, mask)``: ``pred`` and ``images`` (B, C, H, W), ``mask`` (B, h, w)
    over the patch grid (True/1 = masked), expanded to pixels by ``patch_size``.

    Args:
        patch_size: Pixels per mask cell (the model's patch size).
        loss: The reconstruction loss (SimMIM: ``PixelReconstructionLoss``, L1, ``channel = 3``).

    """

    supplies_targets: ClassVar[frozenset[str]] = frozenset({"dense"})
    default_init: ClassVar[list[dict[str, Any]]] = []
    example_config: ClassVar[dict[str, Any]] = {"patch_size": 2}

    def __init__(
        self,
        *,
        patch_size: Annotated[int, Field(gt=0)],
        loss: LossRef = {"type": "PixelReconstructionLoss", "criterion": "L1", "channel": 3},  # noqa: B006
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.loss_module = build_component("loss", loss)

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        """Conformance-kit input: reconstructions ``(pred,)`` (B, 3, 8, 8) and images of that shape."""
        return ((torch.randn(batch_size, 3, 8, 8),), torch.randn(batch_size, 3, 8, 8))

    def pixel_mask(self, mask: Tensor) -> Tensor:
        """(B, h, w) patch mask -> (B, 1, h·p, w·p) float pixel mask."""
        p = self.patch_size
        return mask.float().repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1)

    def loss(  # type: ignore[override]
        self, pred: Tensor | tuple[Tensor, ...], images: Tensor, mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``{"loss": ...}`` on the masked pixels (every pixel when ``mask`` is None)."""
        pred = _last(pred)
        weight = None if mask is None else self.pixel_mask(mask).to(pred.dtype)
        if weight is not None and weight.shape[-2:] != pred.shape[-2:]:
            raise ValueError(
                f"the mask covers {tuple(weight.shape[-2:])} pixels at patch_size {self.patch_size}, the "
                f"reconstruction is {tuple(pred.shape[-2:])}: patch_size must be the model's patch size"
            )
        return {"loss": self.loss_module(pred, images, weight)}

    def predict(self, feats: Tensor | tuple[Tensor, ...]) -> Tensor:
        """The reconstruction flattened per sample (B, C·H·W)."""
        return _last(feats).flatten(1)
