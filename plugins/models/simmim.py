"""SimMIM: reconstruct the raw pixels of masked patches with a one-layer decoder.

Provenance: Xie et al., 2022, "SimMIM: a Simple Framework for Masked Image Modeling"
(arXiv:2111.09886); MMPretrain's ``SimMIM`` (``mmpretrain/models/selfsup/simmim.py``):
``latent = backbone(x, mask)``, ``rec = neck(latent)``, ``loss = head.loss(rec, x, mask)``.
The mask comes with the batch (a ``SimMIMMaskGenerator`` ends the data pipeline);
normalisation happens in the model. :meth:`SimMIM.reconstruct` feeds ``pretrain reconstruct``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from pretrain.components import BackboneRef, HeadRef, Masked, NeckRef
from pretrain.errors import PretrainError
from pretrain.selfsup import IMAGENET_MEAN, IMAGENET_STD, BaseSelfSupervisor
from pretrain_builtins.models._mim import masked_views, unmasked_views

__all__ = ["SimMIM"]

_GENERATOR = "SimMIMMaskGenerator"


class SimMIM(BaseSelfSupervisor):
    """SimMIM: mask tokens in the encoder, a linear decoder to pixels, an L1 loss on masked pixels.

    ``loss(Masked(images, mask))`` returns ``{"loss": ...}``; ``extract_feat(images)``
    runs the encoder without a mask; :meth:`reconstruct` returns images for a visual check.

    Args:
        backbone: The encoder, e.g. a ``SimMIMSwinTransformer`` (``forward(x, mask)``).
        neck: The decoder to pixels, a ``SimMIMLinearDecoder``.
        head: A ``SimMIMHead`` owning the loss (``PixelReconstructionLoss``, L1).
        mean: Per-channel mean of the 0..255 input (one per channel).
        std: Per-channel standard deviation of the 0..255 input.
        to_rgb: Reverse the channel order before normalising (BGR input).

    """

    example_config: ClassVar[dict[str, Any]] = {
        "backbone": {"type": "SimMIMSwinTransformer", "img_size": 16, "patch_size": 2, "window_size": 2,
                     "arch": {"embed_dims": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]}},
        "neck": {"type": "SimMIMLinearDecoder", "in_channels": 64, "encoder_stride": 16},
        "head": {"type": "SimMIMHead", "patch_size": 2},
    }

    def __init__(
        self,
        *,
        backbone: BackboneRef,
        neck: NeckRef,
        head: HeadRef,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        to_rgb: bool = False,
    ) -> None:
        super().__init__(backbone=backbone, neck=neck, head=head, mean=mean, std=std, to_rgb=to_rgb)
        out = getattr(self.neck, "out_channels", self.in_channels)
        if out != self.in_channels:
            raise PretrainError(
                f"model.neck.out_channels is {out} but mean/std describe {self.in_channels} image channels",
                hint=f"Set model.neck.out_channels = {self.in_channels}: the decoder reconstructs the input.",
            )

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        """Conformance-kit input: a ``Masked`` batch (half the patches masked), no labels."""
        size = tuple(getattr(self.backbone, "img_size", (32, 32)))
        p = int(getattr(self.head, "patch_size", 4))
        images = torch.rand(batch_size, self.in_channels, *size) * 255
        return Masked(images, torch.rand(batch_size, size[0] // p, size[1] // p) < 0.5), None

    def extract_feat(self, inputs: Masked | Tensor | Sequence[Tensor]) -> Any:
        """Encoder features of the (first) images without masking."""
        return self.backbone(self.preprocess(unmasked_views(inputs)[0]), mask=None)

    def _reconstruct(self, inputs: Masked | Tensor | Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        (images,), mask = masked_views(inputs, "SimMIM", _GENERATOR)
        x = self.preprocess(images)  # (B, C, H, W)
        latent = self.backbone(x, mask)
        assert self.neck is not None
        (rec,) = self.neck(latent)  # (B, C, H, W)
        if rec.shape != x.shape:
            raise PretrainError(
                f"SimMIM's decoder reconstructs {tuple(rec.shape[1:])} from {tuple(x.shape[1:])} images",
                hint="Set model.neck.encoder_stride to the backbone's total stride (Swin: patch_size · 8) and "
                "use image sizes that are multiples of it.",
            )
        return x, rec, mask

    def loss(self, inputs: Masked | Tensor | Sequence[Tensor], targets: Tensor | None = None) -> dict[str, Tensor]:
        """L1 (by default) pixel loss on the masked patches; ``targets`` (labels) are ignored."""
        x, rec, mask = self._reconstruct(inputs)
        assert self.head is not None
        losses: dict[str, Tensor] = self.head.loss(rec, x, mask)
        return losses

    @torch.no_grad()
    def reconstruct(self, inputs: Masked) -> dict[str, Tensor]:
        """Images for a visual check (``pretrain reconstruct``), all (B, C, H, W) in 0..255.

        Returns:
            ``input``; ``masked`` (masked patches set to 0); ``reconstruction`` (predicted
            where masked, the input elsewhere); ``prediction`` (every pixel predicted);
            ``mask`` (B, 1, H, W), 1 = masked.

        """
        x, rec, mask = self._reconstruct(inputs)
        p = x.shape[-1] // mask.shape[-1]
        pix = mask.float().repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1)  # (B, 1, H, W)
        to_pixels = lambda t: t * self.std + self.mean  # noqa: E731 - undo preprocess
        image = to_pixels(x)
        return {"input": image, "masked": image * (1 - pix), "reconstruction": to_pixels(x * (1 - pix) + rec * pix),
                "prediction": to_pixels(rec), "mask": pix}
