"""MAE: masked autoencoder pretraining (encoder on visible patches, light decoder).

Provenance: He et al., 2022, "Masked Autoencoders Are Scalable Vision Learners"
(arXiv:2111.06377); MMPretrain's ``MAE`` (``mmpretrain/models/selfsup/mae.py``):
``latent, mask, ids_restore = backbone(x)``, ``pred = neck(latent, ids_restore)``,
``loss = head.loss(pred, x, mask)``; features for transfer come from
``backbone(x, mask=False)``. Normalisation (``mean``/``std``, MMPretrain's
``SelfSupDataPreprocessor``) happens inside the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from pretrain.components import BackboneRef, HeadRef, NeckRef
from pretrain.errors import PretrainError
from pretrain.selfsup import IMAGENET_MEAN, IMAGENET_STD, BaseSelfSupervisor

__all__ = ["MAE"]


class MAE(BaseSelfSupervisor):
    """Masked autoencoder: reconstruct the pixels of randomly removed patches.

    ``loss(images)`` returns ``{"loss": ...}`` (mean over masked patches);
    ``extract_feat(images)`` runs the encoder without masking; :meth:`reconstruct`
    returns input, masked input and reconstruction for visualisation. A list of
    views is accepted and the first is used.

    Args:
        backbone: The encoder, an ``MAEViT`` (``forward(x)`` -> ``(latent, mask, ids_restore)``).
        neck: The decoder, an ``MAEPretrainDecoder``.
        head: The ``MAEPretrainHead`` that owns the reconstruction loss.
        mean: Per-channel mean of the 0..255 input (one per channel).
        std: Per-channel standard deviation of the 0..255 input.
        to_rgb: Reverse the channel order before normalising (BGR input).

    """

    #: A small instance for the conformance kit (``pretrain.testing``).
    example_config: ClassVar[dict[str, Any]] = {
        "backbone": {
            "type": "MAEViT", "img_size": 32, "patch_size": 8,
            "arch": {"embed_dims": 16, "num_layers": 1, "num_heads": 2, "feedforward_channels": 32},
        },
        "neck": {
            "type": "MAEPretrainDecoder", "num_patches": 16, "patch_size": 8, "embed_dim": 16,
            "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2,
        },
        "head": {"type": "MAEPretrainHead", "patch_size": 8, "norm_pix": True},
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
        self._check_parts()

    def _check_parts(self) -> None:
        """Cross-component agreement that no single field can check."""
        bb_patch = getattr(self.backbone, "patch_size", None)
        head_patch = getattr(self.head, "patch_size", None)
        if bb_patch is not None and head_patch is not None and bb_patch != head_patch:
            raise PretrainError(
                f"model.head.patch_size is {head_patch} but model.backbone.patch_size is {bb_patch}",
                hint="The head cuts targets into the encoder's patches: make them equal.",
            )
        bb_dims = getattr(self.backbone, "embed_dims", None)
        embed = getattr(getattr(self.neck, "decoder_embed", None), "in_features", None)
        if bb_dims is not None and embed is not None and bb_dims != embed:
            raise PretrainError(
                f"model.neck.embed_dim is {embed} but the encoder (model.backbone) is {bb_dims} wide",
                hint=f"Set model.neck.embed_dim = {bb_dims}.",
            )
        for name, part in (("backbone", self.backbone), ("head", self.head)):
            chans = getattr(part, "in_channels", None)
            if chans is not None and chans != self.in_channels:
                raise PretrainError(
                    f"model.{name}.in_channels is {chans} but mean/std describe "
                    f"{self.in_channels} channels",
                    hint="Give one mean/std value per image channel.",
                )

    def _first_view(self, inputs: Tensor | Sequence[Tensor]) -> Tensor:
        return self.preprocess(self.views(inputs)[0])

    def extract_feat(self, inputs: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Encoder features without masking (the backbone's ``out_type``/``out_indices``)."""
        out: tuple[Tensor, ...] = self.backbone(self._first_view(inputs), mask=False)
        return out

    def _grid(self, x: Tensor) -> tuple[int, int]:
        """(rows, cols) of the patch grid; the image must tile exactly into patches."""
        p = int(getattr(self.head, "patch_size", 0) or getattr(self.backbone, "patch_size", 1))
        h, w = x.shape[-2:]
        if h % p or w % p:
            raise PretrainError(
                f"MAE got {h}x{w} images, which do not tile into {p}x{p} patches",
                hint=f"Resize or crop the data to a multiple of {p} pixels.",
            )
        return h // p, w // p

    def loss(
        self, inputs: Tensor | Sequence[Tensor], targets: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Reconstruction loss on the masked patches; ``targets`` (labels) are ignored."""
        x = self._first_view(inputs)  # (B, C, H, W) normalised
        grid = self._grid(x)
        latent, mask, ids_restore = self.backbone(x)  # (B, 1+K, C), (B, L), (B, L)
        assert self.neck is not None and self.head is not None
        (pred,) = self.neck(latent, ids_restore, grid=grid)  # (B, L, p²·C)
        losses: dict[str, Tensor] = self.head.loss(pred, x, mask)
        return losses

    @torch.no_grad()
    def reconstruct(self, inputs: Tensor | Sequence[Tensor]) -> dict[str, Tensor]:
        """Images for a visual check, all (B, C, H, W) in the 0..255 input scale.

        Returns:
            ``input``; ``masked`` (removed patches set to 0); ``reconstruction``
            (predicted patches where masked, the input elsewhere); ``prediction``
            (every patch predicted); ``mask`` (B, 1, H, W), 1 = removed.

        """
        x = self._first_view(inputs)
        grid = self._grid(x)
        latent, mask, ids_restore = self.backbone(x)
        assert self.neck is not None and self.head is not None
        (pred,) = self.neck(latent, ids_restore, grid=grid)
        pred_img = self.head.reconstruct(pred, x)  # (B, C, H, W), normalised space
        p = x.shape[-2] // grid[0]
        pix_mask = mask.reshape(-1, 1, *grid).repeat_interleave(p, 2).repeat_interleave(p, 3)
        to_pixels = lambda t: t * self.std + self.mean  # noqa: E731 - undo preprocess
        image = to_pixels(x)
        recon = to_pixels(x * (1 - pix_mask) + pred_img * pix_mask)
        return {
            "input": image,
            "masked": image * (1 - pix_mask),
            "reconstruction": recon,
            "prediction": to_pixels(pred_img),
            "mask": pix_mask,
        }
