"""Image classifier: preprocessing -> backbone -> [neck] -> head, with optional batch augments.

Provenance: MMPretrain ``models/classifiers/image.py`` (``ImageClassifier``) and
``models/utils/data_preprocessor.py`` (``ClsDataPreprocessor``), merged: there is
no separate data preprocessor, raw 0..255 images go in and ``mean``/``std``
normalisation, ``to_rgb`` and the channel check happen here (:meth:`preprocess`).

Differences from MMPretrain:

* ``to_rgb`` with ``in_channels != 3`` is a validation error (MMPretrain silently
  does nothing when the batch is not 3-channel);
* a 1-channel (grey) batch is repeated to 3 channels when the backbone takes 3;
  any other channel mismatch is an error naming both counts;
* batch augments (Mixup/CutMix) are listed on the model with ``augment_probs``
  (MMPretrain: ``train_cfg=dict(augments=..., probs=...)``), draw from torch's
  RNG, and never modify the spec; while they are configured, training targets
  are dense (one-hot, then mixed), which the validator checks against the loss
  (``produces_dense_targets``);
* the loss dict has an explicit ``"loss"`` total (from the head).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from pretrain.components import (
    BackboneRef,
    BaseModel,
    BatchAugmentRef,
    HeadRef,
    NeckRef,
    build_component,
)
from pretrain.errors import PretrainError
from pretrain.selfsup import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageClassifier"]


Stage = Literal["backbone", "neck", "pre_logits"]


class ImageClassifier(BaseModel):
    """Image classifier: normalise, backbone, optional neck, classification head.

    ``forward(images)`` returns logits, ``loss(images, labels)`` the head's loss
    dict (``"loss"`` is the total), ``predict(images)`` softmax ``scores`` and
    ``labels``. Images are (N, C, H, W), uint8 or float, in 0..255.

    Args:
        backbone: Feature extractor (returns a tuple of feature maps).
        neck: Optional module between backbone and head (e.g. GlobalAveragePooling).
        head: Classification head owning the loss; without one, ``forward`` returns
            features and ``loss``/``predict`` are unavailable.
        mean: Per-channel mean subtracted from the 0..255 input (one value per
            channel, or one for all); none to skip normalisation.
        std: Per-channel standard deviation the input is divided by; none to skip.
        to_rgb: Reverse the channel order (BGR -> RGB) before normalising; needs
            in_channels = 3.
        in_channels: Channels the backbone takes; a 1-channel batch is repeated
            to 3 channels when this is 3.
        batch_augments: Training-time batch augments (Mixup, CutMix); one is drawn
            per batch. Targets become dense (N, num_classes) while they are set.
        augment_probs: Probability of each batch augment (same length, sum <= 1;
            the rest is "no augment"); default: uniform over the augments.

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {
        "backbone": {"type": "ResNet_CIFAR", "depth": 18, "stem_channels": 8, "base_channels": 8},
        "neck": {"type": "GlobalAveragePooling"},
        "head": {"type": "LinearClsHead", "num_classes": 5, "in_channels": 64},
    }

    def __init__(
        self,
        *,
        backbone: BackboneRef,
        neck: NeckRef | None = None,
        head: HeadRef | None = None,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        to_rgb: bool = False,
        in_channels: Annotated[int, Field(gt=0)] = 3,
        batch_augments: Sequence[BatchAugmentRef] = (),
        augment_probs: list[Annotated[float, Field(ge=0, le=1)]] | None = None,
    ) -> None:
        super().__init__()
        params = {
            "mean": mean, "std": std, "to_rgb": to_rgb, "in_channels": in_channels,
            "augment_probs": augment_probs, "batch_augments": list(batch_augments),
        }  # fmt: skip
        problems = list(self.spec_issues(params))
        if problems:
            raise ValueError("; ".join(f"{name}: {msg}" for name, msg in problems))
        self.backbone: nn.Module = build_component("backbone", backbone)
        self.neck: nn.Module | None = build_component("neck", neck)
        self.head: nn.Module | None = build_component("head", head)
        self.in_channels = in_channels
        self.to_rgb = to_rgb
        self.normalize = mean is not None
        # Not persistent: normalisation is configuration, not a learned weight, and
        # checkpoints stay key-compatible with torchvision/timm conversions.
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(list(mean or [0.0])).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std or [1.0])).view(1, -1, 1, 1), persistent=False)
        self.batch_augments = nn.ModuleList(build_component("batch_augment", a) for a in batch_augments)
        self.augment_probs = None if augment_probs is None else list(augment_probs)
        #: Training targets are dense (N, C) (read by the validator's target-kind check).
        self.produces_dense_targets = bool(self.batch_augments)
        self.num_classes = self._num_classes()

    # ------------------------------------------------------------------ spec checks

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """Normalisation values agree with ``in_channels``; ``augment_probs`` is a distribution."""
        channels = params.get("in_channels", 3)
        mean, std = params.get("mean", IMAGENET_MEAN), params.get("std", IMAGENET_STD)
        if (mean is None) != (std is None):
            yield "std" if std is None else "mean", "give both mean and std, or neither"
        for name, values in (("mean", mean), ("std", std)):
            if values is not None and len(values) not in (1, channels):
                yield name, f"has {len(values)} values but in_channels is {channels}; give one per channel"
        if std is not None and any(s <= 0 for s in std):
            yield "std", "every value must be positive"
        if params.get("to_rgb") and channels != 3:
            yield "to_rgb", f"reverses 3 colour channels, but in_channels is {channels}"
        probs = params.get("augment_probs")
        if probs is not None:
            if sum(probs) > 1 + 1e-6:
                yield "augment_probs", f"must sum to at most 1 (the rest is 'no augment'), got {sum(probs):g}"
            augments = params.get("batch_augments")
            if isinstance(augments, list | tuple) and len(augments) != len(probs):
                yield "augment_probs", f"has {len(probs)} values for {len(augments)} batch_augments"

    def _num_classes(self) -> int | None:
        """Class count for one-hot targets: the head's, else the batch augments'."""
        found = {"head": getattr(self.head, "num_classes", None)}
        for i, aug in enumerate(self.batch_augments):
            found[f"batch_augments[{i}]"] = getattr(aug, "num_classes", None)
        values = {k: v for k, v in found.items() if isinstance(v, int)}
        if len(set(values.values())) > 1:
            raise ValueError("num_classes disagrees: " + ", ".join(f"{k} has {v}" for k, v in values.items()))
        if self.batch_augments and not values:
            raise ValueError(
                "batch_augments need the number of classes to one-hot the labels, but the head "
                "declares none; set num_classes on the batch augment"
            )
        return next(iter(values.values()), None)

    # ------------------------------------------------------------------ inputs

    def preprocess(self, images: Tensor) -> Tensor:
        """(N, C, H, W) uint8/float images in 0..255 -> normalised float (N, in_channels, H, W).

        Raises:
            PretrainError: Wrong rank or channel count.

        """
        if images.dim() != 4:
            raise PretrainError(f"ImageClassifier expects (N, C, H, W) images, got shape {tuple(images.shape)}")
        channels = images.shape[1]
        if channels != self.in_channels:
            if not (channels == 1 and self.in_channels == 3):
                raise PretrainError(
                    f"ImageClassifier takes {self.in_channels}-channel images, got {channels} "
                    f"channels (shape {tuple(images.shape)})",
                    hint="Set model.in_channels (and one mean/std value per channel) to match "
                    "the data, or convert the images.",
                )
            images = images.expand(-1, 3, -1, -1)  # grey -> (N, 3, H, W)
        x = images.to(dtype=self.mean.dtype)
        if self.to_rgb:
            x = x.flip(1)  # BGR -> RGB
        if self.normalize:
            x = (x - self.mean) / self.std
        return x

    def _one_hot(self, targets: Tensor) -> Tensor:
        if targets.dim() == 2 and targets.is_floating_point():
            return targets
        assert self.num_classes is not None  # guaranteed by _num_classes when augmenting
        return F.one_hot(targets.long().view(-1), self.num_classes).float()  # (N, K)

    def _augment(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Apply one batch augment drawn with ``augment_probs`` (torch RNG)."""
        count = len(self.batch_augments)
        probs = self.augment_probs or [1.0 / count] * count
        draw = float(torch.rand(()))
        for aug, p in zip(self.batch_augments, probs, strict=True):
            if draw < p:
                return aug(x, targets)  # type: ignore[no-any-return]
            draw -= p
        return x, targets  # the "no augment" remainder

    # ------------------------------------------------------------------ contract

    def _neck_feats(self, x: Tensor) -> Any:
        feats = self.backbone(x)
        return feats if self.neck is None else self.neck(feats)

    def extract_feat(self, inputs: Tensor, stage: Stage = "neck") -> Any:
        """Features of a raw image batch at ``stage``.

        Args:
            inputs: Images (N, C, H, W) in 0..255.
            stage: ``backbone`` (the backbone's tuple), ``neck`` (after the neck; the
                backbone's output without one; MMPretrain's default) or ``pre_logits``
                (the head's input to its last layer).

        Raises:
            PretrainError: ``pre_logits`` without a head that defines ``pre_logits``.

        """
        x = self.preprocess(inputs)
        if stage == "backbone":
            return self.backbone(x)
        feats = self._neck_feats(x)
        if stage == "neck":
            return feats
        if stage != "pre_logits":
            raise ValueError(f"stage must be backbone, neck or pre_logits, got {stage!r}")
        pre_logits = getattr(self.head, "pre_logits", None)
        if not callable(pre_logits):
            raise PretrainError("extract_feat(stage='pre_logits') needs a head with a pre_logits method")
        return pre_logits(feats)

    def forward(self, inputs: Tensor) -> Any:
        """Logits (N, num_classes) of a raw image batch (features if there is no head)."""
        feats = self._neck_feats(self.preprocess(inputs))
        return feats if self.head is None else self.head(feats)

    def _require_head(self, what: str) -> nn.Module:
        if self.head is None:
            raise PretrainError(f"ImageClassifier.{what} needs a head; this model has none", hint="Add model.head.")
        return self.head

    def loss(self, inputs: Tensor | Sequence[Tensor], targets: Tensor | None = None) -> dict[str, Tensor]:
        """Training loss of a batch.

        Args:
            inputs: Images (N, C, H, W) in 0..255.
            targets: Class indices (N,) or dense class scores (N, C). In training mode
                with batch augments they are one-hot encoded and mixed.

        Returns:
            The head's dict: ``"loss"`` (the total) and logged extras such as
            ``"accuracy/top1"``.

        """
        head = self._require_head("loss")
        if targets is None:
            raise PretrainError("ImageClassifier.loss needs targets (class labels)")
        if not isinstance(inputs, Tensor):
            raise PretrainError("ImageClassifier takes one image batch, not a list of views")
        x = self.preprocess(inputs)
        if self.training and len(self.batch_augments) > 0:
            x, targets = self._augment(x, self._one_hot(targets.to(x.device)))
        out: dict[str, Tensor] = head.loss(self._neck_feats(x), targets)
        return out

    def predict(self, inputs: Tensor | Sequence[Tensor]) -> dict[str, Tensor]:
        """Return ``{"scores": (N, C) softmax scores, "labels": (N,) argmax}``."""
        head = self._require_head("predict")
        if not isinstance(inputs, Tensor):
            raise PretrainError("ImageClassifier takes one image batch, not a list of views")
        scores: Tensor = head.predict(self._neck_feats(self.preprocess(inputs)))
        return {"scores": scores, "labels": scores.argmax(dim=-1)}
