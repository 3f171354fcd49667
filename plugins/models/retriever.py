"""Image-to-image retriever: preprocessing -> backbone -> [neck] -> embedding; a head only for training.

Provenance: MMPretrain ``models/retrievers/image2image.py`` (``ImageToImageRetriever``).
MMPretrain's ``image_encoder = [backbone, neck]`` list becomes the typed ``backbone``
and ``neck`` fields of an :class:`~pretrain_builtins.models.classifier.ImageClassifier`
(same preprocessing, batch augments and head loss), so a classifier's checkpoint
loads key for key (``backbone.*``, ``neck.*``; its ``head.*`` is ignored by
``pretrain eval`` when the retriever has no head).

Differences from MMPretrain:

* the gallery ("prototype") is not a model argument: it is ``[data.gallery]`` (a
  dataset, encoded with the current weights at every evaluation, so it is never
  stale and needs no ``PrepareProtoBeforeValLoopHook``; or an embeddings file), and
  the engine ranks it (chunked, exact under DDP, or faiss); :meth:`set_gallery` +
  :meth:`predict` serve interactive use;
* ``similarity`` is ``cosine``, ``dot`` or ``euclidean``, checked when the spec is
  validated (MMPretrain's invalid ``similarity_fn`` recurses until ``RecursionError``);
* ``topk`` caps the ranked lists, and so the K of the retrieval metrics (an explicit
  ``eval.topk`` above it is an error; MMPretrain's ``topk`` does not affect them);
* ``extract_feat`` returns one (N, D) embedding per image (the neck's last output,
  averaged over space if it still is a feature map).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from pretrain.components import (
    BackboneRef,
    BaseRetriever,
    BatchAugmentRef,
    HeadRef,
    NeckRef,
    Similarity,
)
from pretrain.errors import PretrainError
from pretrain.selfsup import IMAGENET_MEAN, IMAGENET_STD
from pretrain_builtins.models.classifier import ImageClassifier

__all__ = ["ImageToImageRetriever"]


class ImageToImageRetriever(ImageClassifier, BaseRetriever):
    """Retriever: embeds images with backbone (+ neck) and ranks a gallery by similarity.

    ``extract_feat(images)`` / ``forward(images)`` return (N, D) embeddings; with a
    head (e.g. ``ArcFaceClsHead``) ``loss(images, labels)`` trains the embedding like
    a classifier; ``predict(images)`` ranks the gallery given to :meth:`set_gallery`.

    Args:
        backbone: Feature extractor.
        neck: Optional module after the backbone (e.g. GlobalAveragePooling); its last
            output is the embedding.
        head: Optional head for training (its classes are the training identities).
        similarity: How queries and gallery items are compared: ``cosine``, ``dot``
            or ``euclidean`` (negated distance).
        topk: Gallery items ranked per query (none: the whole gallery); also the
            largest K of the retrieval metrics.
        mean: Per-channel mean subtracted from the 0..255 input; none to skip.
        std: Per-channel standard deviation the input is divided by; none to skip.
        to_rgb: Reverse the channel order (BGR -> RGB) before normalising.
        in_channels: Channels the backbone takes (a grey batch is repeated to 3).
        batch_augments: Training-time batch augments (Mixup, CutMix).
        augment_probs: Probability of each batch augment (default: uniform).

    """

    example_config: ClassVar[dict[str, Any]] = {
        "backbone": {"type": "ResNet_CIFAR", "depth": 18, "stem_channels": 8, "base_channels": 8},
        "neck": {"type": "GlobalAveragePooling"},
        "head": {"type": "ArcFaceClsHead", "num_classes": 5, "in_channels": 64, "scale": 16.0},
    }

    def __init__(
        self,
        *,
        backbone: BackboneRef,
        neck: NeckRef | None = None,
        head: HeadRef | None = None,
        similarity: Similarity = "cosine",
        topk: Annotated[int, Field(gt=0)] | None = None,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        to_rgb: bool = False,
        in_channels: Annotated[int, Field(gt=0)] = 3,
        batch_augments: Sequence[BatchAugmentRef] = (),
        augment_probs: list[Annotated[float, Field(ge=0, le=1)]] | None = None,
    ) -> None:
        super().__init__(backbone=backbone, neck=neck, head=head, mean=mean, std=std, to_rgb=to_rgb,
                         in_channels=in_channels, batch_augments=batch_augments, augment_probs=augment_probs)
        if similarity not in ("cosine", "dot", "euclidean"):
            raise ValueError(f"similarity must be cosine, dot or euclidean, got {similarity!r}")
        self.similarity = similarity
        self.topk = topk

    def extract_feat(self, inputs: Tensor, stage: str = "neck") -> Tensor:  # type: ignore[override]
        """Embeddings (N, D) of a raw image batch (N, C, H, W) in 0..255.

        Raises:
            PretrainError: The neck (or backbone) output is not (N, D) or (N, C, H, W).

        """
        if stage != "neck":
            raise ValueError(f"a retriever's features are its embeddings (stage 'neck'), got {stage!r}")
        feats = self._neck_feats(self.preprocess(inputs))
        out = feats[-1] if isinstance(feats, tuple | list) else feats
        if isinstance(out, Tensor) and out.dim() == 4:
            out = out.mean(dim=(2, 3))  # (N, C, H, W) -> (N, C)
        if not isinstance(out, Tensor) or out.dim() != 2:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise PretrainError(
                f"ImageToImageRetriever embeddings must be (N, D), but the neck/backbone gives {shape}",
                hint="Add a neck that pools the features, e.g. model.neck = {type = \"GlobalAveragePooling\"}.",
            )
        return out

    def forward(self, inputs: Tensor) -> Tensor:
        """Embeddings (N, D) (MMPretrain's ``tensor`` mode)."""
        return self.extract_feat(inputs)

    predict = BaseRetriever.predict

    def example_inputs(self, batch_size: int) -> tuple[Tensor, Tensor | None]:
        """A raw 32x32 batch and training labels, for the conformance kit (``pretrain.testing``)."""
        images = torch.rand(batch_size, self.in_channels, 32, 32) * 255
        labels = None if self.num_classes is None else torch.randint(0, self.num_classes, (batch_size,))
        return images, labels
