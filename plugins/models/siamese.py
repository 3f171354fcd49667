"""Non-contrastive (siamese) self-supervision: BYOL, SimSiam and Barlow Twins.

Provenance (losses exactly as MMPretrain 1.x, ``mmpretrain/models/selfsup/``):

* ``BYOL`` (Grill et al., 2020, arXiv:2006.07733; ``byol.py``): the online network
  predicts the target network's projection of the other view;
  ``loss = 2 * (head.loss(p1, t2) + head.loss(p2, t1))`` with a negative-cosine loss
  (so -4 at perfect agreement); the target network is a momentum copy of backbone +
  neck whose update rate follows a cosine from ``base_momentum`` to 0.
* ``SimSiam`` (Chen & He, 2021, arXiv:2011.10566; ``simsiam.py``): the same without a
  momentum copy, the target is the other view's own projection, detached;
  ``loss = 0.5 * (head.loss(z1, z2) + head.loss(z2, z1))``.
* ``BarlowTwins`` (Zbontar et al., 2021, arXiv:2103.03230; ``barlowtwins.py``):
  ``head.loss(z1, z2)`` on the cross-correlation of the two views' projections.

Differences (``docs/differences.md``): the target network updates after each optimizer
step with the engine's step count; ``SimSiam.fix_pred_lr`` is a model field (MMPretrain
sets it through ``SimSiamHook`` and ``paramwise_cfg``), exposed to the optimizer as
:meth:`SimSiam.param_group_options`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

from pydantic import Field
from torch import Tensor

from pretrain.components import BackboneRef, HeadRef, NeckRef
from pretrain.selfsup import IMAGENET_MEAN, IMAGENET_STD
from pretrain_builtins.layers.momentum import MomentumTeacher
from pretrain_builtins.models.multiview_base import MultiViewSelfSupervisor, check_width

__all__ = ["BYOL", "BarlowTwins", "SimSiam"]

_TINY_RESNET: dict[str, Any] = {"type": "ResNet_CIFAR", "depth": 18, "stem_channels": 4, "base_channels": 4}


def _width(module: Any, attr: str) -> int | None:
    value = getattr(module, attr, None)
    return value if isinstance(value, int) else None


class _PredictorCheck(MultiViewSelfSupervisor):
    """Predict-the-other-view algorithms: the predictor maps projections to projections."""

    def _check_predictor(self) -> None:
        projection = _width(self.neck, "out_channels")
        predictor = getattr(self.head, "predictor", None)
        check_width("model.head.predictor.in_channels", _width(predictor, "in_channels"),
                    "the width model.neck outputs (out_channels)", projection,
                    "The predictor takes the projections: make its in_channels the neck's out_channels.")
        check_width("model.head.predictor.out_channels", _width(predictor, "out_channels"),
                    "the width of the targets (model.neck.out_channels)", projection,
                    "Predictions are compared with projections: make the predictor's out_channels "
                    "the neck's out_channels.")


class BYOL(_PredictorCheck):
    """BYOL: predict the momentum target network's projection of the other view.

    ``loss([view1, view2])`` returns ``{"loss": 2 * (l(p1, t2) + l(p2, t1))}``; the
    target network ``target_net`` (backbone + neck) is part of the state dict.

    Args:
        backbone: The encoder being pretrained.
        neck: The projector (``NonLinearNeck``).
        head: A ``LatentPredictHead`` (predictor + ``CosineSimilarityLoss``).
        base_momentum: Update rate of the target network at step 0, following a cosine to
            0 at the last step (MMEngine's convention: 0.01 is the paper's τ = 0.99 -> 1).
        mean: Per-channel mean of the 0..255 input (one value per channel).
        std: Per-channel standard deviation of the 0..255 input.
        to_rgb: Reverse the channel order before normalising (BGR input).

    """

    teacher_attr: ClassVar[str | None] = "target_net"
    example_config: ClassVar[dict[str, Any]] = {
        "backbone": _TINY_RESNET,
        "neck": {"type": "NonLinearNeck", "in_channels": 32, "hid_channels": 16, "out_channels": 8,
                 "with_bias": True, "with_last_bn": False},
        "head": {"type": "LatentPredictHead",
                 "predictor": {"type": "NonLinearNeck", "in_channels": 8, "hid_channels": 16, "out_channels": 8,
                               "with_bias": True, "with_last_bn": False, "with_avg_pool": False}},
    }

    def __init__(
        self,
        *,
        backbone: BackboneRef,
        neck: NeckRef,
        head: HeadRef,
        base_momentum: Annotated[float, Field(ge=0, le=1)] = 0.004,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        to_rgb: bool = False,
    ) -> None:
        super().__init__(backbone=backbone, neck=neck, head=head, mean=mean, std=std, to_rgb=to_rgb)
        self._check_predictor()
        self.base_momentum = base_momentum
        self.target_net = MomentumTeacher(self.online(), base_momentum, cosine=True)

    def loss(self, inputs: Tensor | Sequence[Tensor], targets: Tensor | None = None) -> dict[str, Tensor]:
        """Symmetric negative cosine between online predictions and target projections."""
        v1, v2 = self.input_views(inputs)
        p1, p2 = self.project(v1), self.project(v2)  # online projections (n, d)
        t1, t2 = self.teacher_project(v1), self.teacher_project(v2)  # no gradient
        assert self.head is not None
        loss = 2.0 * (self.head.loss(p1, t2)["loss"] + self.head.loss(p2, t1)["loss"])
        return {"loss": loss}


class SimSiam(_PredictorCheck):
    """SimSiam: predict the other view's (detached) projection with a shared encoder.

    ``loss([view1, view2])`` returns ``{"loss": 0.5 * (l(p1, z2) + l(p2, z1))}``.

    Args:
        backbone: The encoder being pretrained.
        neck: The projector (``NonLinearNeck``, 3 layers).
        head: A ``LatentPredictHead`` (predictor + ``CosineSimilarityLoss``).
        fix_pred_lr: Train the predictor (``head.predictor``) at the base learning rate,
            outside the schedule (MMPretrain's ``SimSiamHook(fix_pred_lr=True)``); applied
            by the optimizer through :meth:`param_group_options`.
        mean: Per-channel mean of the 0..255 input (one value per channel).
        std: Per-channel standard deviation of the 0..255 input.
        to_rgb: Reverse the channel order before normalising (BGR input).

    """

    example_config: ClassVar[dict[str, Any]] = {
        "backbone": _TINY_RESNET,
        "neck": {"type": "NonLinearNeck", "in_channels": 32, "hid_channels": 16, "out_channels": 8,
                 "num_layers": 3, "with_last_bn_affine": False},
        "head": {"type": "LatentPredictHead",
                 "predictor": {"type": "NonLinearNeck", "in_channels": 8, "hid_channels": 4, "out_channels": 8,
                               "with_avg_pool": False, "with_last_bn": False, "with_last_bias": True}},
    }

    def __init__(
        self,
        *,
        backbone: BackboneRef,
        neck: NeckRef,
        head: HeadRef,
        fix_pred_lr: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        to_rgb: bool = False,
    ) -> None:
        super().__init__(backbone=backbone, neck=neck, head=head, mean=mean, std=std, to_rgb=to_rgb)
        self._check_predictor()
        self.fix_pred_lr = fix_pred_lr

    def param_group_options(self) -> dict[str, dict[str, Any]]:
        """Optimizer options by parameter-name prefix: ``{"head.predictor.": {"fix_lr": True}}``.

        An optimizer builder puts matching parameters in their own group with these
        options; a group with ``fix_lr`` keeps its base learning rate at every step (the
        schedule skips it), as MMPretrain's ``paramwise_cfg`` ``fix_lr`` + ``SimSiamHook``.
        """
        return {"head.predictor.": {"fix_lr": True}} if self.fix_pred_lr else {}

    def loss(self, inputs: Tensor | Sequence[Tensor], targets: Tensor | None = None) -> dict[str, Tensor]:
        """Symmetric negative cosine between each prediction and the other view's projection."""
        v1, v2 = self.input_views(inputs)
        z1, z2 = self.project(v1), self.project(v2)  # (n, d) each
        assert self.head is not None
        loss = 0.5 * (self.head.loss(z1, z2)["loss"] + self.head.loss(z2, z1)["loss"])
        return {"loss": loss}


class BarlowTwins(MultiViewSelfSupervisor):
    """Barlow Twins: the cross-correlation of the two views' projections should be the identity.

    ``loss([view1, view2])`` returns ``{"loss": head.loss(z1, z2)}``.

    Args:
        backbone: The encoder being pretrained.
        neck: The projector (``NonLinearNeck``, 3 layers, no last norm).
        head: A ``LatentCrossCorrelationHead`` (batch norm + ``CrossCorrelationLoss``).
        mean: Per-channel mean of the 0..255 input (one value per channel).
        std: Per-channel standard deviation of the 0..255 input.
        to_rgb: Reverse the channel order before normalising (BGR input).

    """

    example_config: ClassVar[dict[str, Any]] = {
        "backbone": _TINY_RESNET,
        "neck": {"type": "NonLinearNeck", "in_channels": 32, "hid_channels": 16, "out_channels": 8,
                 "num_layers": 3, "with_last_bn": False},
        "head": {"type": "LatentCrossCorrelationHead", "in_channels": 8},
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

    def loss(self, inputs: Tensor | Sequence[Tensor], targets: Tensor | None = None) -> dict[str, Tensor]:
        """Cross-correlation loss of the two views' projections (labels are ignored)."""
        v1, v2 = self.input_views(inputs)
        z1, z2 = self.project(v1), self.project(v2)  # (n, d) each
        assert self.head is not None
        losses: dict[str, Tensor] = self.head.loss(z1, z2)
        return losses
