"""AcmeRotNet: rotation-prediction pretraining (Gidaris et al., 2018, arXiv:1803.07728).

The seed guide's "add a new self-supervised algorithm" step (``NewAlgorithm``).
MMPretrain's printed version imports the misspelt ``BaseSelfSupvisor`` and calls
``super().__init__(init_cfg)``, which passes ``init_cfg`` as the backbone; here
the parts are keyword arguments that the core validates and builds, and only
``loss`` is new. The pretext task: every image is shown at 0, 90, 180 and 270
degrees and the head learns which rotation it sees, which needs an
understanding of object shape. The backbone is what transfers.
"""

# [snippet algorithm]
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from pretrain import PretrainError
from pretrain.components import BackboneRef, HeadRef, NeckRef
from pretrain.selfsup import IMAGENET_MEAN, IMAGENET_STD, BaseSelfSupervisor

__all__ = ["AcmeRotNet"]

#: Rotations (multiples of 90 degrees) the head must tell apart.
NUM_ROTATIONS = 4


class AcmeRotNet(BaseSelfSupervisor):
    """Self-supervised pretraining by predicting which of four rotations an image shows.

    ``loss(images)`` rotates each (square) image by 0/90/180/270 degrees and
    returns the head's 4-way classification loss; labels are ignored.
    ``extract_feat(images)`` returns the backbone features for transfer.

    Args:
        backbone: The encoder being pretrained.
        neck: Pools the backbone features, e.g. GeMPooling.
        head: A classification head with ``num_classes = 4`` (one per rotation).
        mean: Per-channel mean of the 0..255 input (one value per channel).
        std: Per-channel standard deviation of the 0..255 input.
        to_rgb: Reverse the channel order before normalising (BGR input).
    """

    example_config: ClassVar[dict[str, Any]] = {
        "backbone": {"type": "AcmeResNetCIFAR", "depth": 18, "base_channels": 8},
        "neck": {"type": "GeMPooling"},
        "head": {"type": "MLPClsHead", "num_classes": 4, "in_channels": 64, "hidden_channels": 16},
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
        classes = getattr(self.head, "num_classes", NUM_ROTATIONS)
        if classes != NUM_ROTATIONS:
            raise PretrainError(
                f"model.head.num_classes is {classes}, but AcmeRotNet predicts one of {NUM_ROTATIONS} rotations",
                hint=f"Set model.head.num_classes = {NUM_ROTATIONS}.",
            )
        # The head's 4 classes are rotations, not the dataset's classes: nothing to score.
        self.num_classes = None

    def loss(self, inputs: Tensor | Sequence[Tensor], targets: Tensor | None = None) -> dict[str, Tensor]:
        """4-way rotation classification loss of the batch (``targets`` are ignored)."""
        x = self.preprocess(self.views(inputs)[0])  # (N, C, H, W), normalised
        if x.shape[-1] != x.shape[-2]:
            raise PretrainError(f"AcmeRotNet needs square images, got {x.shape[-2]}x{x.shape[-1]}",
                                hint="Crop or resize the data to a square size.")
        rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(NUM_ROTATIONS)])  # (4N, C, H, W)
        labels = torch.arange(NUM_ROTATIONS, device=x.device).repeat_interleave(x.shape[0])  # (4N,)
        assert self.neck is not None and self.head is not None
        losses: dict[str, Tensor] = self.head.loss(self.neck(self.backbone(rotated)), labels)
        return losses
# [/snippet]

