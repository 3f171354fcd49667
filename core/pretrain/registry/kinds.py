"""Component kinds: the single source of facts about each kind (torch-free, imported by listing).

Every other module asks this one: which entry-point group a kind uses, whether its
components are ``torch.nn.Module`` s, whether they own weights (and so accept an
``init`` key), whether a spec table configures them, and which base class in
:mod:`pretrain.components` documents their contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "KINDS",
    "KIND_INFO",
    "PLUGIN_GROUP",
    "ComponentRef",
    "KindInfo",
    "group_of",
    "kind_of_group",
]


@dataclass(frozen=True)
class KindInfo:
    """What the core knows about one component kind.

    Attributes:
        name: The kind (``backbone``).
        group: Its entry-point group (``pretrain.backbones``); the entry-point *name*
            is the spec's ``type``.
        module: Components are ``torch.nn.Module`` subclasses.
        weights: Components own parameters, so their tables accept ``init`` rules.
        spec: Components are configured by a spec table (a schema is derived from
            their ``__init__``); weight converters are not.
        base: The class that documents the contract: a name in :mod:`pretrain.components`
            (subclassing it is optional for spec kinds), or a dotted path.
        summary: One line for listings and docs.
        requires: Dotted path of a class every component of the kind must subclass
            (checked without importing it: a subclass means it is imported already).
        runtime_args: Constructor arguments the engine passes, not the spec (an
            optimizer's parameter groups).

    """

    name: str
    group: str
    module: bool
    weights: bool
    spec: bool
    base: str
    summary: str
    requires: str | None = None
    runtime_args: tuple[str, ...] = ()


_MODULE: Final = "torch.nn.Module"

#: Every kind, in display order.
KIND_INFO: Final[dict[str, KindInfo]] = {
    info.name: info
    for info in (
        KindInfo("model", "pretrain.models", True, True, True, "BaseModel",
                 "top-level task module: loss(), predict(), extract_feat()", _MODULE),
        KindInfo("backbone", "pretrain.backbones", True, True, True, "BaseBackbone",
                 "feature extractor: forward(x) -> tuple of feature maps", _MODULE),
        KindInfo("neck", "pretrain.necks", True, True, True, "BaseNeck",
                 "maps backbone outputs to head inputs", _MODULE),
        KindInfo("head", "pretrain.heads", True, True, True, "BaseHead",
                 "owns its loss: loss(feats, targets), predict(feats)", _MODULE),
        KindInfo("loss", "pretrain.losses", True, True, True, "BaseLoss",
                 "forward(pred, target, weight, avg_factor, reduction_override)", _MODULE),
        KindInfo("target_generator", "pretrain.target_generators", True, True, True,
                 "BaseTargetGenerator", "self-supervised targets under no_grad", _MODULE),
        KindInfo("batch_augment", "pretrain.batch_augments", True, False, True, "BaseBatchAugment",
                 "batch-level augmentation with dense targets (Mixup, CutMix)"),
        KindInfo("dataset", "pretrain.datasets", False, False, True, "BaseDataset",
                 "labelled list of uint8 images"),
        KindInfo("transform", "pretrain.transforms", True, False, True, "BaseTransform",
                 "seeded per-sample image transform"),
        KindInfo("metric", "pretrain.metrics", False, False, True, "BaseMetric",
                 "evaluation metric: per-batch states, exact cross-rank reduction, named scalars"),
        KindInfo("optimizer", "pretrain.optimizers", False, False, True, "torch.optim.Optimizer",
                 "a torch.optim.Optimizer whose keyword-only fields come from [train.optimizer]",
                 "torch.optim.Optimizer", ("params",)),
        KindInfo("weight_converter", "pretrain.weight_converters", False, False, False,
                 "BaseWeightConverter", "maps another library's state dict to ours"),
    )
}

#: kind -> entry-point group.
KINDS: Final[dict[str, str]] = {name: info.group for name, info in KIND_INFO.items()}

#: pluggy behavioural hooks live in their own group.
PLUGIN_GROUP: Final = "pretrain.plugins"

_GROUP_TO_KIND: Final[dict[str, str]] = {group: kind for kind, group in KINDS.items()}


def group_of(kind: str) -> str:
    """Return the entry-point group of ``kind``."""
    return KINDS[kind]


def kind_of_group(group: str) -> str | None:
    """Return the kind whose entry-point group is ``group``, if any."""
    return _GROUP_TO_KIND.get(group)


@dataclass(frozen=True)
class ComponentRef:
    """Marks a constructor parameter as a nested component spec of ``kind``.

    Used as ``Annotated[nn.Module, ComponentRef("loss")]``; the spec value is a
    table with a ``type`` and is validated (and built) recursively.
    """

    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS or not KIND_INFO[self.kind].spec:
            spec_kinds = [k for k, info in KIND_INFO.items() if info.spec]
            raise ValueError(f"unknown component kind {self.kind!r}; known: {', '.join(spec_kinds)}")
