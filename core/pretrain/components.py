"""Base classes and annotations for component authors (imports torch).

Nothing here is required: a plain ``torch.nn.Module`` with a typed ``__init__``
works as a backbone, neck or loss. The base classes document each kind's
contract, mark the kind (``component_kind``) so that a parameter annotated with
one is a nested component, and are what ``pretrain.testing`` checks against.

Nested components are annotated either with a base class (``loss: BaseLoss``) or
with the aliases below (``loss: LossRef``); their spec value is a table with a
``type``, built by the core before ``__init__`` is called. Code that constructs a
component by hand may pass a module or a spec mapping; call
:func:`build_component` on such a parameter to accept both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

from torch import Tensor, nn

from pretrain._data_contracts import (
    BaseDataset,
    BaseStreamDataset,
    BaseTransform,
    Batch,
    Masked,
    Pipeline,
    ShardInfo,
    SkipSample,
    TransformRef,
    mix_seed,
    to_channels,
)
from pretrain._eval_contracts import (
    BaseMetric,
    MetricContext,
    MetricInputs,
    MetricResult,
    Reduce,
    Similarity,
    ranked_topk,
    search_topk,
    similarity_scores,
)
from pretrain.registry.kinds import ComponentRef

__all__ = [
    "BackboneRef",
    "BaseBackbone",
    "BaseBatchAugment",
    "BaseDataset",
    "BaseHead",
    "BaseLoss",
    "BaseMetric",
    "BaseModel",
    "BaseNeck",
    "BaseRetriever",
    "BaseStreamDataset",
    "BaseTargetGenerator",
    "BaseTransform",
    "BaseWeightConverter",
    "Batch",
    "BatchAugmentRef",
    "HeadRef",
    "LossRef",
    "Masked",
    "MetricContext",
    "MetricInputs",
    "MetricResult",
    "NeckRef",
    "Pipeline",
    "Reduce",
    "ShardInfo",
    "Similarity",
    "SkipSample",
    "TargetGeneratorRef",
    "TargetKind",
    "TransformRef",
    "build_component",
    "mix_seed",
    "ranked_topk",
    "search_topk",
    "similarity_scores",
    "to_channels",
]

#: What a loss's ``target`` is: class indices (N,), dense scores (N, C), or either.
TargetKind = Literal["index", "dense", "both"]

BackboneRef = Annotated[nn.Module, ComponentRef("backbone")]
NeckRef = Annotated[nn.Module, ComponentRef("neck")]
HeadRef = Annotated[nn.Module, ComponentRef("head")]
LossRef = Annotated[nn.Module, ComponentRef("loss")]
TargetGeneratorRef = Annotated[nn.Module, ComponentRef("target_generator")]
BatchAugmentRef = Annotated[nn.Module, ComponentRef("batch_augment")]


class BaseBackbone(nn.Module):
    """Backbone contract: ``forward(x) -> tuple[Tensor, ...]``, one per ``out_indices``.

    Optional: ``get_layer_depth(param_name: str, prefix: str = "") -> tuple[int, int]``
    (MMPretrain's signature) returns ``(layer_id, num_layers)`` of a parameter and
    enables layer-wise learning-rate decay; the trainer passes the name relative to
    the backbone and no ``prefix``. ``frozen_stages``/``norm_eval`` honoured in ``train``.
    """

    component_kind: ClassVar[str] = "backbone"

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:  # pragma: no cover - abstract
        """Return one feature map per ``out_indices`` entry."""
        raise NotImplementedError


class BaseNeck(nn.Module):
    """Neck contract: maps the backbone's tuple of features to the head's inputs (a tuple)."""

    component_kind: ClassVar[str] = "neck"

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:  # pragma: no cover
        """Transform backbone features."""
        raise NotImplementedError


class BaseLoss(nn.Module):
    """Loss contract: ``forward(pred, target, weight=None, avg_factor=None, reduction_override=None)``.

    ``target_kind`` declares what ``target`` must be: ``index`` (N,) class indices,
    ``dense`` (N, C) scores, or ``both``. Heads convert indices to one-hot for
    ``dense`` losses.
    """

    component_kind: ClassVar[str] = "loss"
    target_kind: ClassVar[TargetKind] = "index"

    def forward(  # pragma: no cover - abstract
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        """Return the (weighted, reduced, ``loss_weight``-scaled) loss."""
        raise NotImplementedError


class BaseHead(nn.Module):
    """Head contract: owns its loss; ``loss(feats, targets) -> dict``, ``predict(feats)``.

    ``loss`` returns a dict whose ``"loss"`` entry is the total to optimise; other
    entries (``accuracy/top1``, ``loss_cls``...) are logged only.
    ``supplies_targets`` lists the target kinds the head can hand to its loss.
    """

    component_kind: ClassVar[str] = "head"
    supplies_targets: ClassVar[frozenset[str]] = frozenset({"index", "dense"})

    def loss(self, feats: tuple[Tensor, ...], targets: Tensor) -> dict[str, Tensor]:
        """Compute the loss dict (``"loss"`` is the total)."""
        raise NotImplementedError  # pragma: no cover

    def predict(self, feats: tuple[Tensor, ...]) -> Tensor:
        """Return prediction scores (N, C)."""
        raise NotImplementedError  # pragma: no cover


class BaseTargetGenerator(nn.Module):
    """Target generator contract: ``forward(images) -> targets``, always under ``no_grad``."""

    component_kind: ClassVar[str] = "target_generator"


class BaseBatchAugment(nn.Module):
    """Batch augment contract: ``forward(inputs, dense_targets) -> (inputs, dense_targets)``."""

    component_kind: ClassVar[str] = "batch_augment"


class BaseModel(nn.Module):
    """Top-level task module.

    ``loss(inputs, targets=None) -> dict[str, Tensor]`` with an explicit ``"loss"``
    total (other keys are logged, never summed implicitly), ``predict(inputs) ->
    dict`` (classifiers: ``scores`` (N, C) and ``labels`` (N,)) and
    ``extract_feat(inputs)``. ``inputs`` are raw batches (uint8 or float images,
    or a list of views); normalisation happens inside the model.
    """

    component_kind: ClassVar[str] = "model"
    #: Channels of the images the model expects (used by the shape check).
    in_channels: int = 3

    def loss(
        self, inputs: Tensor | Sequence[Tensor], targets: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Return the loss dict; ``"loss"`` is what the engine optimises."""
        raise NotImplementedError  # pragma: no cover

    def predict(self, inputs: Tensor | Sequence[Tensor]) -> dict[str, Tensor]:
        """Return predictions for evaluation."""
        raise NotImplementedError  # pragma: no cover

    def extract_feat(self, inputs: Tensor) -> Any:
        """Return features (backbone output unless the model documents otherwise)."""
        raise NotImplementedError  # pragma: no cover


class BaseRetriever(BaseModel):
    """Retrieval model: embeds images and ranks gallery items by similarity.

    ``extract_feat(inputs) -> (N, D)`` embeddings; :attr:`similarity` (``cosine``,
    ``dot`` or ``euclidean``, larger = more similar) and :attr:`topk` (None: the
    whole gallery) say how items are ranked. The engine encodes the gallery with the
    current weights at every evaluation and scores it itself (chunked, exact under
    DDP, or through faiss); :meth:`set_gallery` + :meth:`predict` serve interactive
    use. ``eval_task = "retrieval"`` is how the engine and the validator recognise a
    retriever (its head's classes are training classes, not the gallery's).
    """

    eval_task: ClassVar[str] = "retrieval"
    #: How queries and gallery items are compared.
    similarity: Similarity = "cosine"
    #: Gallery items ``predict`` returns per query (None: all of them).
    topk: int | None = None

    def set_gallery(self, feats: Tensor, labels: Tensor | None = None) -> None:
        """Use ``feats`` (M, D) (and optional class ``labels`` (M,)) as the gallery of :meth:`predict`."""
        if feats.dim() != 2 or feats.shape[0] == 0:
            from pretrain.errors import PretrainError

            raise PretrainError(f"a gallery is a non-empty (M, D) tensor, got shape {tuple(feats.shape)}")
        self._gallery = (feats.detach(), None if labels is None else labels.detach())

    def predict(self, inputs: Tensor | Sequence[Tensor]) -> dict[str, Tensor]:
        """Rank the gallery for each image: ``scores``/``indices`` (N, K), best first.

        With a class-labelled gallery, ``labels`` (N,) is the class of the best match.

        Raises:
            PretrainError: No gallery was set.

        """
        gallery = getattr(self, "_gallery", None)
        if gallery is None:
            from pretrain.errors import PretrainError

            raise PretrainError(
                f"{type(self).__name__}.predict needs a gallery; call set_gallery(feats) first",
                hint="`pretrain eval` encodes [data.gallery] itself; `pretrain embed` saves features.",
            )
        feats, labels = gallery
        if not isinstance(inputs, Tensor):
            from pretrain.errors import PretrainError

            raise PretrainError(f"{type(self).__name__} takes one image batch, not a list of views")
        query = self.extract_feat(inputs)  # (N, D)
        k = self.topk or feats.shape[0]
        scores, indices = search_topk(query.float(), feats.to(query.device).float(), k, self.similarity)
        out = {"scores": scores, "indices": indices}
        if labels is not None:
            out["labels"] = labels.to(indices.device)[indices[:, 0]]
        return out


class BaseWeightConverter:
    """Weight converter contract (kind ``weight_converter``, group ``pretrain.weight_converters``).

    Converts another library's state dict (torchvision, timm, MMPretrain, ...) to the
    keys of our models, for ``pretrain convert-weights --from SOURCE --arch NAME``. The
    entry-point name is the converter's family (``resnet``); the class declares which
    architectures it converts, per source library, as regular expressions that must
    match the whole architecture name (lower-cased, without a timm ``.tag`` suffix).
    The CLI picks the one converter whose :attr:`architectures` match, so adding a
    family never touches the core. Converters are pure key mappers: they must fail on
    any source key they do not understand, naming it, rather than drop it.

    Example::

        class ResNetConverter(BaseWeightConverter):
            architectures = {"torchvision": [r"resnet(18|34|50|101|152)"]}

            def convert(self, state_dict, *, source, arch):
                return {f"backbone.{k}": v for k, v in state_dict.items()}
    """

    component_kind: ClassVar[str] = "weight_converter"
    #: source library -> regular expressions over architecture names.
    architectures: ClassVar[Mapping[str, Sequence[str]]] = {}

    @staticmethod
    def arch_key(arch: str) -> str:
        """The part of ``arch`` that :attr:`architectures` is matched against."""
        return arch.split(".", 1)[0].lower()

    @classmethod
    def handles(cls, source: str, arch: str) -> bool:
        """Whether this converter converts ``source``'s architecture ``arch``."""
        key = cls.arch_key(arch)
        return any(re.fullmatch(pattern, key) for pattern in cls.architectures.get(source, ()))

    def convert(self, state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
        """Return ``state_dict`` under our keys (``backbone.*``, ``head.*``); tensors are not copied."""
        raise NotImplementedError  # pragma: no cover - abstract

    def backbone_spec(self, source: str, arch: str) -> dict[str, Any] | None:
        """The backbone spec table the converted weights fit, if the name pins it (else None)."""
        return None


def build_component(kind: str, value: nn.Module | Mapping[str, Any] | None) -> Any:
    """Accept an already-built module or a spec mapping (``{"type": ..., ...}``).

    The core passes built modules; this lets hand-written Python (notebooks,
    tests) pass either. ``None`` stays ``None``.

    Raises:
        pretrain.SpecError: The mapping is not a valid spec for ``kind``.

    """
    if value is None or isinstance(value, nn.Module):
        return value
    if isinstance(value, Mapping):
        from pretrain.assembly.assemble import build_from_spec

        return build_from_spec(kind, value)
    raise TypeError(f"expected a {kind} module or spec mapping, got {type(value).__name__}")
