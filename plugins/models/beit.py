"""BEiT v1/v2: predict the tokenizer's visual word of every masked patch.

Provenance: Bao et al., 2022, "BEiT" (arXiv:2106.08254) and Peng et al., 2022, "BEiT v2"
(arXiv:2208.06366); MMPretrain's ``BEiT`` (``mmpretrain/models/selfsup/beit.py``),
v1 or v2 by configuration: ``latent = backbone(images, mask)``; ``target =
target_generator(target_images)`` under ``no_grad``; v1 (no neck): ``head.loss(latent,
target, mask)``; v2: ``head.loss(neck(latent, rel_pos_bias), target, mask)``. Each sample
carries two pictures of one crop (``RandomResizedCropAndInterpolationWithTwoPic``) and a
mask (``BEiTMaskGenerator``). MMPretrain's ``TwoNormDataPreprocessor`` becomes the
model's ``second_mean``/``second_std``: the tokenizer's picture is normalised with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from pretrain.components import BackboneRef, HeadRef, Masked, NeckRef, TargetGeneratorRef
from pretrain.errors import PretrainError
from pretrain.selfsup import IMAGENET_MEAN, IMAGENET_STD, BaseSelfSupervisor
from pretrain_builtins.models._mim import masked_views, patch_mask, unmasked_views

__all__ = ["BEiT"]

_GENERATOR = "BEiTMaskGenerator"


class BEiT(BaseSelfSupervisor):
    """BEiT v1 (no neck, ``BEiTV1Head``, DALL-E) or v2 (``BEiTV2Neck``, ``BEiTV2Head``, VQKD).

    ``loss(Masked([images, target_images], mask))`` returns ``{"loss": ...}`` (v2 also logs
    ``loss_1`` and ``loss_2``); ``extract_feat(images)`` runs the encoder without a mask.

    Args:
        backbone: The encoder, a ``BEiTPretrainViT``.
        neck: ``BEiTV2Neck`` for BEiT v2; none for v1.
        head: ``BEiTV1Head`` or ``BEiTV2Head``, owning the cross-entropy over the vocabulary.
        target_generator: The frozen tokenizer: ``DALL-E`` (v1) or ``VQKD`` (v2).
        mean: Per-channel mean of the 0..255 input of the encoder.
        std: Per-channel standard deviation of the encoder's input.
        to_rgb: Reverse the channel order of both pictures before normalising (BGR input).
        second_mean: Per-channel mean of the tokenizer's picture (v1: -31.875, DALL-E's
            ``0.8·x/255 + 0.1`` map; v2: 127.5); default ``mean``.
        second_std: Per-channel standard deviation of the tokenizer's picture (v1: 318.75;
            v2: 127.5); default ``std``.

    """

    example_config: ClassVar[dict[str, Any]] = {
        "backbone": {"type": "BEiTPretrainViT", "img_size": 16, "patch_size": 4,
                     "arch": {"embed_dims": 16, "num_layers": 2, "num_heads": 2, "feedforward_channels": 32}},
        "head": {"type": "BEiTV1Head", "embed_dims": 16, "num_embed": 16},
        "target_generator": {"type": "DALL-E", "group_count": 2, "n_hid": 4, "n_blk_per_group": 1,
                             "vocab_size": 16, "allow_random_init": True},
        "second_mean": [-31.875, -31.875, -31.875], "second_std": [318.75, 318.75, 318.75],
    }

    def __init__(
        self,
        *,
        backbone: BackboneRef,
        head: HeadRef,
        target_generator: TargetGeneratorRef,
        neck: NeckRef | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        to_rgb: bool = False,
        second_mean: Sequence[float] | None = None,
        second_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(backbone=backbone, neck=neck, head=head, target_generator=target_generator,
                         mean=mean, std=std, to_rgb=to_rgb)
        second_mean = list(mean) if second_mean is None else list(second_mean)
        second_std = list(std) if second_std is None else list(second_std)
        problems = list(self._check_norm(second_mean, second_std, to_rgb))
        if problems or len(second_mean) != self.in_channels:
            raise ValueError(f"second_mean/second_std must give {self.in_channels} positive values")
        self.register_buffer("second_mean", torch.tensor(second_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("second_std", torch.tensor(second_std).view(1, -1, 1, 1), persistent=False)

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """Both normalisations: lengths agree with the channels, standard deviations positive."""
        yield from super().spec_issues(params)
        mean = params.get("mean", IMAGENET_MEAN)
        second_mean, second_std = params.get("second_mean"), params.get("second_std")
        if (second_mean is None) != (second_std is None):
            yield "second_std" if second_std is None else "second_mean", "give both second_mean and second_std"
        elif second_mean is not None and second_std is not None:
            for name, msg in cls._check_norm(second_mean, second_std, params.get("to_rgb", False)):
                yield f"second_{name}", msg
            if len(second_mean) != len(mean):
                yield "second_mean", f"has {len(second_mean)} values but mean has {len(mean)}"

    def preprocess_second(self, images: Tensor) -> Tensor:
        """The tokenizer's picture (N, C, h, w) 0..255 -> normalised with ``second_mean``/``second_std``."""
        x = images.to(dtype=self.second_mean.dtype)
        if self.to_rgb:
            x = x.flip(1)
        return (x - self.second_mean) / self.second_std

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        """Conformance-kit input: two pictures (the second at half size for DALL-E) and a half mask."""
        size = tuple(getattr(self.backbone, "img_size", (32, 32)))
        grid = tuple(getattr(self.backbone, "patch_resolution", (4, 4)))
        images = torch.rand(batch_size, self.in_channels, *size) * 255
        second = images if type(self.target_generator).__name__ != "DALLEEncoder" else images[..., ::2, ::2]
        return Masked([images, second.contiguous()], torch.rand(batch_size, *grid) < 0.5), None

    def extract_feat(self, inputs: Masked | Tensor | Sequence[Tensor]) -> Any:
        """Encoder features of the first picture without masking."""
        return self.backbone(self.preprocess(unmasked_views(inputs)[0]), mask=None)

    def loss(self, inputs: Masked | Tensor | Sequence[Tensor], targets: Tensor | None = None) -> dict[str, Tensor]:
        """Cross-entropy of the masked patches' visual words (``targets``, the labels, are ignored)."""
        (images, target_images), mask = masked_views(inputs, "BEiT", _GENERATOR, count=2)
        x = self.preprocess(images)
        grid = tuple(getattr(self.backbone, "patch_resolution", mask.shape[1:]))
        patch_mask(mask, grid, "BEiT", _GENERATOR)  # (B, L): checked against the encoder's grid
        latent = self.backbone(x, mask)  # raw tokens (B, 1 + L, C) per out_indices
        target = self.make_targets(self.preprocess_second(target_images))
        cells = target.shape[-2:].numel() if target.dim() == 4 else target[0].numel()
        if cells != mask[0].numel():
            raise PretrainError(
                f"BEiT's tokenizer gives {cells} tokens per image but the encoder has {mask[0].numel()} patches",
                hint="Size the second picture (RandomResizedCropAndInterpolationWithTwoPic.second_size) so the "
                "tokenizer's grid is the patch grid: DALL-E divides by 8 (112 px for 14x14), VQKD by its patch size.",
            )
        assert self.head is not None
        if self.neck is not None:  # BEiT v2: the neck aggregates early patch tokens under the shared bias
            bias = self.backbone.shared_bias() if hasattr(self.backbone, "shared_bias") else None
            feats = self.neck(latent, rel_pos_bias=bias)
            losses: dict[str, Tensor] = self.head.loss(feats, target, mask)
        else:  # BEiT v1: the first output's tokens
            losses = self.head.loss((latent[0],), target, mask)
        if not torch.isfinite(losses["loss"]):
            raise PretrainError("BEiT's loss is not finite", hint="Lower the learning rate or clip gradients.")
        return losses
