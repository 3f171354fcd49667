"""Base class of self-supervised algorithms (MAE, and the ones you write).

Provenance: MMPretrain's ``mmpretrain/models/selfsup/base.py`` (``BaseSelfSupervisor``).
An algorithm is a composition of a ``backbone``, an optional ``neck`` and ``head``
(which owns the loss) and an optional ``target_generator``; only the ``loss`` glue
differs between algorithms. Unlike MMPretrain there is no separate data
preprocessor: raw 0..255 images go in, and ``mean``/``std`` normalisation happens
here (:meth:`BaseSelfSupervisor.preprocess`).

Writing a new algorithm (MMPretrain's ``NewAlgorithm`` walk-through, which does not
run as printed: the base class name is misspelt and ``super().__init__(init_cfg)``
passes ``init_cfg`` as the backbone) is a subclass, an entry point and a spec::

    # my_pkg/algorithm.py
    from pretrain.components import BackboneRef, HeadRef, NeckRef
    from pretrain.selfsup import BaseSelfSupervisor


    class NewAlgorithm(BaseSelfSupervisor):
        '''Predict the features of one view from the other.

Args:
            backbone: Encoder.
            neck: Projector.
            head: Owns the loss; ``head.loss(pred, target)``.
        '''

        def __init__(self, *, backbone: BackboneRef, neck: NeckRef, head: HeadRef) -> None:
            super().__init__(backbone=backbone, neck=neck, head=head)

        def loss(self, inputs, targets=None):
            view1, view2 = (self.preprocess(v) for v in self.views(inputs, 2))
            pred = self.neck(self.backbone(view1))[0]
            with torch.no_grad():
                target = self.neck(self.backbone(view2))[0]
            loss = self.head.loss(pred, target)
            return {"loss": loss}

    # pyproject.toml
    [project.entry-points."pretrain.models"]
    NewAlgorithm = "my_pkg.algorithm:NewAlgorithm"

    # spec.toml
    [model]
    type = "NewAlgorithm"
    [model.backbone]
    type = "ResNet"
    depth = 18
    ...

"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pretrain.components import (
    BackboneRef,
    BaseModel,
    HeadRef,
    NeckRef,
    TargetGeneratorRef,
    build_component,
)
from pretrain.errors import PretrainError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "BaseSelfSupervisor"]

#: ImageNet RGB statistics in 0..255 units (MMPretrain's data-preprocessor defaults).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class BaseSelfSupervisor(BaseModel):
    """Base of self-supervised algorithms: backbone, optional neck/head/target generator.

    Subclasses implement :meth:`loss`. :meth:`extract_feat` (and ``forward``) return
    the backbone's features; :meth:`predict` is not defined for pretext tasks.

    Args:
        backbone: The encoder being pretrained (what transfers to downstream tasks).
        neck: Optional projector/decoder between backbone and head.
        head: Optional head owning the loss.
        target_generator: Optional module producing targets (run under ``no_grad``).
        mean: Per-channel mean subtracted from the 0..255 input (its length is the
            number of input channels).
        std: Per-channel standard deviation the input is divided by.
        to_rgb: Reverse the channel order (BGR -> RGB) before normalising; 3-channel input only.

    """

    mean: Tensor
    std: Tensor
    #: Pretext tasks predict no dataset classes, whatever their head's ``num_classes``
    #: (rotations, prototypes): the trainer scores them by ``val_loss`` instead.
    num_classes: int | None = None

    def __init__(
        self,
        *,
        backbone: BackboneRef,
        neck: NeckRef | None = None,
        head: HeadRef | None = None,
        target_generator: TargetGeneratorRef | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        to_rgb: bool = False,
    ) -> None:
        super().__init__()
        problems = list(self._check_norm(mean, std, to_rgb))
        if problems:
            raise ValueError("; ".join(f"{name}: {msg}" for name, msg in problems))
        self.backbone: nn.Module = build_component("backbone", backbone)
        self.neck: nn.Module | None = build_component("neck", neck)
        self.head: nn.Module | None = build_component("head", head)
        self.target_generator: nn.Module | None = build_component(
            "target_generator", target_generator
        )
        self.in_channels = len(mean)
        self.to_rgb = to_rgb
        # Not persistent: normalisation is configuration, not a learned weight.
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)

    # ------------------------------------------------------------------ spec checks

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """``mean``/``std`` lengths agree, ``std`` is positive, ``to_rgb`` has 3 channels."""
        return cls._check_norm(
            params.get("mean", IMAGENET_MEAN), params.get("std", IMAGENET_STD), params.get("to_rgb", False)
        )

    @staticmethod
    def _check_norm(
        mean: Sequence[float], std: Sequence[float], to_rgb: bool
    ) -> Iterable[tuple[str, str]]:
        if len(mean) == 0:
            yield "mean", "needs one value per input channel"
        if len(mean) != len(std):
            yield "std", f"has {len(std)} values but mean has {len(mean)}; give one per channel"
        if any(s <= 0 for s in std):
            yield "std", "every value must be positive"
        if to_rgb and len(mean) != 3:
            yield "to_rgb", f"reverses 3 colour channels, but mean/std describe {len(mean)}"

    # ------------------------------------------------------------------ inputs

    @staticmethod
    def views(inputs: Tensor | Sequence[Tensor], count: int = 1) -> list[Tensor]:
        """Return the first ``count`` views of a batch (a tensor is a single view).

        Raises:
            PretrainError: Fewer views than the algorithm needs.

        """
        views = [inputs] if isinstance(inputs, Tensor) else list(inputs)
        if len(views) < count:
            raise PretrainError(
                f"this algorithm needs {count} views per batch but got {len(views)}",
                hint="Wrap the training transforms in MultiView with num_views = "
                f"{count} in the data spec.",
            )
        return views[:count]

    def preprocess(self, images: Tensor) -> Tensor:
        """(N, C, H, W) uint8/float images in 0..255 -> normalised float tensor.

        Raises:
            PretrainError: Wrong rank or channel count.

        """
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise PretrainError(
                f"{type(self).__name__} expects (N, {self.in_channels}, H, W) images, "
                f"got shape {tuple(images.shape)}",
                hint="The model's mean/std fix the channel count; convert the data "
                "(e.g. grey to RGB) or give one mean/std value per channel.",
            )
        x = images.to(dtype=self.mean.dtype)
        if self.to_rgb:
            x = x.flip(1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def make_targets(self, images: Tensor) -> Tensor:
        """Run the target generator without gradients (normalised images in)."""
        if self.target_generator is None:
            raise PretrainError(f"{type(self).__name__} has no target_generator")
        out: Tensor = self.target_generator(images)
        return out

    # ------------------------------------------------------------------ contract

    def extract_feat(self, inputs: Tensor | Sequence[Tensor]) -> Any:
        """Backbone features of the (first view of the) batch."""
        return self.backbone(self.preprocess(self.views(inputs)[0]))

    def forward(self, inputs: Tensor | Sequence[Tensor]) -> Any:
        """Same as :meth:`extract_feat` (MMPretrain's ``tensor`` mode)."""
        return self.extract_feat(inputs)

    def loss(
        self, inputs: Tensor | Sequence[Tensor], targets: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Return the pretext-task losses; ``"loss"`` is the total to optimise."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss()")

    def predict(self, inputs: Tensor | Sequence[Tensor]) -> dict[str, Tensor]:
        """Not available: a pretext task has no predictions to score.

        Raises:
            PretrainError: Always.

        """
        raise PretrainError(
            f"{type(self).__name__} is a self-supervised pretraining model and has no "
            "predictions to evaluate",
            hint="Evaluate it by its loss, or load its backbone into an ImageClassifier "
            '(a Pretrained init rule with prefix = "backbone.") and fine-tune or linear-probe it.',
        )
