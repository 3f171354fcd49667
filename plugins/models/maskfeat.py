"""MaskFeat: predict the HOG features of masked patches.

Provenance: Wei et al., 2022, "Masked Feature Prediction for Self-Supervised Visual
Pre-Training" (arXiv:2112.09133); MMPretrain's ``MaskFeat``
(``mmpretrain/models/selfsup/maskfeat.py``): ``latent = backbone(x, mask)``,
``pred = neck(latent)`` per token, ``hog = target_generator(x)``,
``loss = head.loss(pred[:, 1:], hog, mask)``. The mask comes with the batch (a
``BEiTMaskGenerator`` ends the data pipeline); normalisation happens in the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from pretrain.components import BackboneRef, HeadRef, Masked, NeckRef, TargetGeneratorRef
from pretrain.selfsup import IMAGENET_MEAN, IMAGENET_STD, BaseSelfSupervisor
from pretrain_builtins.models._mim import masked_views, patch_mask, unmasked_views

__all__ = ["MaskFeat"]

_GENERATOR = "BEiTMaskGenerator"


class MaskFeat(BaseSelfSupervisor):
    """MaskFeat: the encoder sees mask tokens in place of masked patches and predicts their HOG.

    ``loss(Masked(images, mask))`` returns ``{"loss": ...}``, the mean over masked
    patches; ``extract_feat(images)`` runs the encoder without a mask.

    Args:
        backbone: The encoder, a ``MaskFeatViT``.
        neck: Per-token projection to the target size, a ``LinearNeck`` (``norm = "none"``).
        head: A ``MIMHead`` owning the loss (``PixelReconstructionLoss``, L2).
        target_generator: The ``HOGGenerator`` (run on the normalised images, as MMPretrain).
        mean: Per-channel mean of the 0..255 input (one per channel).
        std: Per-channel standard deviation of the 0..255 input.
        to_rgb: Reverse the channel order before normalising (BGR input).

    """

    example_config: ClassVar[dict[str, Any]] = {
        "backbone": {"type": "MaskFeatViT", "img_size": 16, "patch_size": 4,
                     "arch": {"embed_dims": 16, "num_layers": 1, "num_heads": 2, "feedforward_channels": 32}},
        "neck": {"type": "LinearNeck", "in_channels": 16, "out_channels": 108, "norm": "none"},
        "head": {"type": "MIMHead", "loss": {"type": "PixelReconstructionLoss", "criterion": "L2"}},
        "target_generator": {"type": "HOGGenerator", "pool": 2, "patch_size": 4, "gaussian_window": 0},
    }

    def __init__(
        self,
        *,
        backbone: BackboneRef,
        neck: NeckRef,
        head: HeadRef,
        target_generator: TargetGeneratorRef,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        to_rgb: bool = False,
    ) -> None:
        super().__init__(backbone=backbone, neck=neck, head=head, target_generator=target_generator,
                         mean=mean, std=std, to_rgb=to_rgb)

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        """Conformance-kit input: a ``Masked`` batch (about half the patches masked), no labels."""
        size = tuple(getattr(self.backbone, "img_size", (32, 32)))
        grid = tuple(getattr(self.backbone, "patch_resolution", (4, 4)))
        images = torch.rand(batch_size, self.in_channels, *size) * 255
        return Masked(images, torch.rand(batch_size, *grid) < 0.5), None

    def extract_feat(self, inputs: Masked | Tensor | Sequence[Tensor]) -> Any:
        """Encoder features of the (first) images without masking."""
        return self.backbone(self.preprocess(unmasked_views(inputs)[0]), mask=None)

    def loss(self, inputs: Masked | Tensor | Sequence[Tensor], targets: Tensor | None = None) -> dict[str, Tensor]:
        """HOG prediction loss on the masked patches (``targets``, the labels, are ignored)."""
        (images,), mask = masked_views(inputs, "MaskFeat", _GENERATOR)
        x = self.preprocess(images)  # (B, C, H, W)
        grid = tuple(getattr(self.backbone, "patch_resolution", mask.shape[1:]))
        p = int(getattr(self.backbone, "patch_size", 1))
        flat = patch_mask(mask, (x.shape[-2] // p, x.shape[-1] // p) if p > 1 else grid, "MaskFeat", _GENERATOR)
        (latent,) = self.backbone(x, mask)  # (B, 1 + L, C)
        b, length, c = latent.shape
        assert self.neck is not None and self.head is not None
        (pred,) = self.neck((latent.reshape(b * length, c),))  # every token, as a batch of vectors
        pred = pred.view(b, length, -1)
        hog = self.make_targets(x)  # (B, L, D)
        losses: dict[str, Tensor] = self.head.loss(pred[:, 1:], hog, flat)  # the cls token has no target
        return losses
