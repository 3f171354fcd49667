"""The ``[data]`` spec section: datasets and transform pipelines -> batches on the device.

A spec's data table, in full::

    [data]
    batch_size = 64          # per process
    val_batch_size = 256     # default: batch_size
    num_workers = 0          # DataLoader workers (datasets that are not kept in memory)
    image_size = 32          # size the pipelines must produce (checked before training)
    in_memory = "auto"       # true | false | "auto": one uint8 tensor (on the GPU on CUDA)
    drop_last = false        # drop each epoch's last incomplete training batch

    [data.train]
    type = "Digits"
    split = "train"
    pipeline = [{type = "RandomCrop", size = 32, padding = 2}, {type = "RandomFlip"}]

    [data.val]
    type = "Digits"
    split = "val"

Two ways to feed the model, chosen per dataset:

- **in memory** (small datasets: Digits, CIFAR, an ``ImageFolder`` with ``image_size``):
  every image decoded once into one uint8 (N, C, H, W) tensor, moved to the training
  device; each batch is gathered by index and augmented there, on the whole batch at
  once with per-sample random parameters. Loading costs nothing next to a train step.
- **DataLoader** (everything else): ``num_workers`` processes decode and augment
  one sample at a time; batches are pinned and copied asynchronously.

A pipeline may end with a mask generator (``BEiTMaskGenerator``,
``SimMIMMaskGenerator``): its samples are ``Masked(images, mask)``, and both paths
yield ``Masked`` batches whose masks are stacked into bool (N, h, w), on the device
with the images.

Reproducibility is exact and cheap to resume: the sample order of epoch ``e`` is a
function of ``(seed, e)`` only, and augmentation randomness comes from generators
seeded from ``(seed, epoch, batch)`` (in memory) or ``(seed, epoch, sample index)``
(DataLoader), never from the global RNG. So ``iter_from(epoch, k)`` replays exactly
the batches ``k, k+1, ...`` an uninterrupted run would have seen, without touching
the first ``k``.

Distributed runs shard like ``DistributedSampler``: rank ``r`` of ``W`` takes every
``W``-th sample of the epoch order (training pads by wrapping around, or truncates
with ``drop_last``); evaluation shards without padding, so summing per-rank counts
gives exact metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from pretrain.engine.data_contracts import (
    BaseDataset,
    BaseTransform,
    Batch,
    Masked,
    Pipeline,
    SkipSample,
    TransformRef,
    mix_seed,
    stack_masked,
    to_channels,
)
from pretrain.errors import PretrainError

if TYPE_CHECKING:
    from pretrain._validate import ValidationContext

__all__ = [
    "BaseDataset",
    "BaseTransform",
    "Batch",
    "DataOptions",
    "DataSection",
    "DatasetSpec",
    "EvalLoader",
    "Loaders",
    "Masked",
    "Pipeline",
    "SkipSample",
    "TrainLoader",
    "TransformRef",
    "build_loaders",
    "json_schema",
    "mix_seed",
    "to_channels",
    "validate_data_section",
]

# --------------------------------------------------------------------------- spec section


class DataOptions(BaseModel):
    """Plain fields of the ``[data]`` table (``train``/``val`` are component tables)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: Annotated[int, Field(gt=0)] = Field(64, description="Images per batch per process.")
    val_batch_size: Annotated[int, Field(gt=0)] | None = Field(
        None, description="Images per evaluation batch per process (default: batch_size)."
    )
    num_workers: Annotated[int, Field(ge=0)] = Field(
        0, description="DataLoader worker processes for datasets not kept in memory."
    )
    image_size: Annotated[int, Field(gt=0)] | None = Field(
        None,
        description="Height and width the pipelines must produce (checked before training "
        "and used by `pretrain validate`'s shape check).",
    )
    in_memory: bool | Literal["auto"] = Field(
        "auto",
        description="Keep the decoded dataset as one uint8 tensor on the training device "
        "and augment whole batches there. auto: when the images share one size and fit "
        "in in_memory_max_mb.",
    )
    in_memory_max_mb: Annotated[int, Field(gt=0)] = Field(
        2048, description="Largest decoded dataset (MiB) that in_memory = 'auto' keeps in memory."
    )
    drop_last: bool = Field(False, description="Drop each epoch's incomplete last training batch.")


_SPLITS = ("train", "val")
#: Seed of evaluation-time augmentation (independent of the run's seed).
_EVAL_SEED = 0
_SPLIT_KEYS = ("type", "pipeline")


@dataclass(frozen=True)
class DatasetSpec:
    """One of ``[data.train]``/``[data.val]``: a dataset and its pipeline.

    Attributes:
        dataset: A validated ``ComponentNode``, or an already built dataset.
        pipeline: Validated transform nodes or built transform modules, in order.
        loc: Spec path, for error messages.

    """

    dataset: Any
    pipeline: tuple[Any, ...] = ()
    loc: str = "data"


@dataclass(frozen=True)
class DataSection:
    """The validated ``[data]`` table.

    Attributes:
        options: Batch size, workers, in-memory policy, ...
        train: Training dataset and pipeline, if given.
        val: Validation dataset and pipeline, if given.

    """

    options: DataOptions
    train: DatasetSpec | None = None
    val: DatasetSpec | None = None


def _validate_split(value: Any, ctx: ValidationContext, loc: str) -> DatasetSpec | None:
    if not isinstance(value, Mapping):
        ctx.add(loc, "expected a table with a 'type' (a dataset) and an optional 'pipeline' "
                "list of transforms, e.g. {type = \"Digits\", split = \"train\"}")
        return None
    table = dict(value)
    pipeline = table.pop("pipeline", [])
    before = len(ctx.issues)
    nodes = ctx.components("transform", pipeline, f"{loc}.pipeline")
    node = ctx.component("dataset", table, loc)
    if node is None or len(ctx.issues) > before:
        return None
    return DatasetSpec(node, tuple(nodes), loc)


def validate_data_section(raw: Any, ctx: ValidationContext, loc: str = "data") -> DataSection | None:
    """Validate a spec's ``[data]`` table, recording every problem in ``ctx``.

    Args:
        raw: The table as parsed from TOML/JSON.
        ctx: Validation context (collects issues; resolves component types).
        loc: Spec path of the table.

    Returns:
        The validated section, or None when anything is wrong (see ``ctx.issues``).

    """
    if not isinstance(raw, Mapping):
        ctx.add(loc, f"expected a table (batch_size, train, val, ...), got {type(raw).__name__}")
        return None
    before = len(ctx.issues)
    options: DataOptions | None = None
    try:
        options = DataOptions.model_validate({k: v for k, v in raw.items() if k not in _SPLITS})
    except ValidationError as exc:
        ctx.add_pydantic(exc, loc, [*DataOptions.model_fields, *_SPLITS])
    splits = {name: _validate_split(raw[name], ctx, f"{loc}.{name}") for name in _SPLITS if name in raw}
    if not any(name in raw for name in _SPLITS):
        ctx.add(loc, "no dataset: add [data.train] and/or [data.val] tables, "
                "e.g. [data.train] type = \"Digits\"")
    if options is None or len(ctx.issues) > before:
        return None
    return DataSection(options, splits.get("train"), splits.get("val"))


def json_schema() -> dict[str, Any]:
    """JSON Schema of the ``[data]`` table for ``pretrain schema``.

    ``train``/``val`` are a ``oneOf`` over the installed datasets, each extended with
    ``pipeline`` (items refer to ``#/$defs/transform``, which the spec schema defines).
    Broken dataset plugins are left out.
    """
    from pretrain._registry import get_registry
    from pretrain._schema import component_schema
    from pretrain.errors import PluginLoadError

    schema = DataOptions.model_json_schema(ref_template="#/$defs/{model}")
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    pipeline = {"type": "array", "items": {"$ref": "#/$defs/transform"},
                "description": "Transforms applied in order to every image."}
    registry = get_registry()
    variants, mapping = [], {}
    for record in registry.entries("dataset"):
        try:
            cls = registry.load(record)
        except PluginLoadError:
            continue
        variant = component_schema(cls, "dataset", record.name).json_schema(record.qualified_name)
        defs.update(variant.pop("$defs", {}))
        variant["properties"]["pipeline"] = pipeline
        name = f"data_{record.qualified_name.replace(':', '__')}"
        defs[name] = variant
        variants.append({"$ref": f"#/$defs/{name}"})
        mapping[record.name] = f"#/$defs/{name}"
    split: dict[str, Any] = {
        "description": "A dataset table (`type` and its fields) plus an optional `pipeline`.",
        "oneOf": variants or [{"not": {}}],
        "discriminator": {"propertyName": "type", "mapping": mapping},
    }
    schema["properties"].update({"train": split, "val": split})
    schema["title"] = "data"
    return schema


# --------------------------------------------------------------------------- sources


def _build(obj: Any) -> Any:
    """Build a validated node; pass through objects that are already built."""
    try:
        from pretrain._validate import ComponentNode
    except ImportError:  # pragma: no cover - core without the validator
        return obj
    if isinstance(obj, ComponentNode):
        from pretrain._build import build_node

        return build_node(obj)
    return obj


class _MemorySource:
    """Whole dataset as one uint8 tensor on the device; batches augmented there."""

    def __init__(self, images: Tensor, labels: Tensor, pipeline: Pipeline, device: torch.device) -> None:
        self.images = images.to(device)  # (N, C, H, W) uint8
        self.labels = labels.to(device=device, dtype=torch.long)  # (N,)
        self.pipeline = pipeline
        self.device = device
        self._generator = torch.Generator(device=device)

    def batch(self, indices: Tensor, key: tuple[int, ...]) -> Batch:
        idx = indices.to(self.device, non_blocking=True)
        # (B, C, H, W); a list of views after MultiView, a Masked after a mask generator
        images: Tensor | list[Tensor] | Masked = self.images.index_select(0, idx)
        if len(self.pipeline):
            self._generator.manual_seed(mix_seed(*key))
            images = self.pipeline(images, generator=self._generator)
        return images, self.labels.index_select(0, idx)


class _SampleDataset(torch.utils.data.Dataset[Any]):
    """Decodes and augments one sample; keys are ``(epoch, index)`` so workers stay stateless."""

    def __init__(self, dataset: BaseDataset, pipeline: Pipeline, channels: int, seed: int) -> None:
        self.dataset, self.pipeline, self.channels, self.seed = dataset, pipeline, channels, seed
        self.labels = dataset.targets.to(torch.long)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor | list[Tensor] | Masked, int] | None:
        epoch, index = key
        try:
            image: Tensor | list[Tensor] | Masked = to_channels(self.dataset.load_image(index), self.channels)
        except SkipSample:
            return None
        if len(self.pipeline):
            generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, index))
            image = self.pipeline(image, generator=generator)
        return image, int(self.labels[index])


def _stack(items: list[Tensor]) -> Tensor:
    shapes = {tuple(t.shape) for t in items}
    if len(shapes) > 1:
        raise PretrainError(
            f"the images of one batch have different sizes {sorted(shapes)[:3]}",
            hint="Add a Resize/CenterCrop/RandomResizedCrop to the pipeline (or set the "
            "dataset's image_size) so that every image ends up the same size.",
        )
    return torch.stack(items)


def _collate(samples: list[tuple[Tensor | list[Tensor] | Masked, int] | None]) -> Batch | None:
    kept = [s for s in samples if s is not None]
    if not kept:
        return None
    labels = torch.tensor([label for _, label in kept], dtype=torch.long)
    first = kept[0][0]
    if isinstance(first, Masked):  # images (or views) stacked, masks into (N, h, w) bool
        return stack_masked([s[0] for s in kept], stack=_stack), labels  # type: ignore[misc]
    if isinstance(first, list):
        views = [_stack([s[0][v] for s in kept]) for v in range(len(first))]
        return views, labels
    return _stack([s[0] for s in kept]), labels  # type: ignore[misc]


class _LoaderSource:
    """A torch DataLoader over ``_SampleDataset``; batches are lists of ``(epoch, index)``."""

    def __init__(self, samples: _SampleDataset, num_workers: int, device: torch.device) -> None:
        self.samples = samples
        self.device = device
        self._batches: list[list[tuple[int, int]]] = []
        self._loader = torch.utils.data.DataLoader(
            samples,
            batch_sampler=self._BatchList(self),
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
        )

    class _BatchList:
        def __init__(self, owner: _LoaderSource) -> None:
            self.owner = owner

        def __iter__(self) -> Iterator[list[tuple[int, int]]]:
            return iter(self.owner._batches)

        def __len__(self) -> int:
            return len(self.owner._batches)

    def run(self, batches: list[Tensor], epoch: int) -> Iterator[Batch]:
        self._batches = [[(epoch, int(i)) for i in b] for b in batches]
        for item in self._loader:
            if item is None:  # every sample of the batch was skipped
                continue
            images, labels = item
            if isinstance(images, Masked):
                images = images.to(self.device, non_blocking=True)
            elif isinstance(images, list):
                images = [v.to(self.device, non_blocking=True) for v in images]
            else:
                images = images.to(self.device, non_blocking=True)
            yield images, labels.to(self.device, non_blocking=True)


# --------------------------------------------------------------------------- loaders


def _split_batches(order: Tensor, batch_size: int, drop_last: bool) -> list[Tensor]:
    batches = list(torch.split(order, batch_size))
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


class TrainLoader:
    """Training batches of one rank; the order of an epoch depends only on ``(seed, epoch)``.

    Iterate after ``set_epoch(e)``, or call ``iter_from(e, k)`` to resume at batch ``k``.
    """

    def __init__(
        self, source: _MemorySource | _LoaderSource, *, size: int, batch_size: int,
        drop_last: bool, seed: int, rank: int, world_size: int,
    ) -> None:
        self._source, self.size, self.batch_size = source, size, batch_size
        self.drop_last, self.seed, self.rank, self.world_size = drop_last, seed, rank, world_size
        self.epoch = 0
        # Like DistributedSampler: every rank gets the same count (pad, or truncate with drop_last).
        per_rank = size // world_size if drop_last else (size + world_size - 1) // world_size
        #: Samples this rank sees per epoch (padding included).
        self.num_samples = per_rank
        self._num_batches = (
            per_rank // batch_size if drop_last else (per_rank + batch_size - 1) // batch_size
        )

    def __len__(self) -> int:
        return self._num_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose (deterministic) order ``__iter__`` yields."""
        self.epoch = epoch

    def indices(self, epoch: int) -> Tensor:
        """This rank's dataset indices for ``epoch``, in order (long (num_samples,), CPU)."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        order = torch.randperm(self.size, generator=generator)
        if self.world_size > 1:
            total = self.num_samples * self.world_size
            if total > self.size:  # pad by wrapping around, like DistributedSampler
                order = torch.cat([order, order.repeat(-(-total // self.size))])
            order = order[:total][self.rank :: self.world_size]
        return order

    def iter_from(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """Yield the batches ``start_batch, start_batch + 1, ...`` of ``epoch``.

        They are exactly the batches an uninterrupted iteration of ``epoch`` yields
        at those positions (same samples, same augmentation).
        """
        self.epoch = epoch
        batches = _split_batches(self.indices(epoch), self.batch_size, self.drop_last)
        if isinstance(self._source, _MemorySource):
            for b in range(start_batch, len(batches)):
                yield self._source.batch(batches[b], (self.seed, epoch, b, self.rank))
        else:
            yield from self._source.run(batches[start_batch:], epoch)

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(self.epoch, 0)


class EvalLoader:
    """Evaluation batches of one rank: every ``world_size``-th sample, in order, no padding.

    A (rarely wanted) random val pipeline draws from a fixed seed, not the run's, so
    ``pretrain eval`` reproduces the training-time metric whatever ``--seed`` was.
    """

    def __init__(
        self, source: _MemorySource | _LoaderSource, *, size: int, batch_size: int,
        rank: int, world_size: int,
    ) -> None:
        self._source, self.batch_size, self.rank = source, batch_size, rank
        self._order = torch.arange(size)[rank::world_size]
        #: Real samples of this rank (sum over ranks = ``total_samples``).
        self.num_samples = len(self._order)
        self.total_samples = size

    def __len__(self) -> int:
        return (self.num_samples + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        batches = _split_batches(self._order, self.batch_size, False)
        if isinstance(self._source, _MemorySource):
            for b, batch in enumerate(batches):
                yield self._source.batch(batch, (_EVAL_SEED, -1, b, self.rank))
        else:
            yield from self._source.run(batches, -1)


@dataclass
class Loaders:
    """What ``build_loaders`` returns.

    Attributes:
        train: Training batches (None without ``[data.train]``).
        val: Evaluation batches (None without ``[data.val]``).
        classes: Class names (label ``i`` is ``classes[i]``).
        channels: Channels of the yielded images.
        in_memory: Whether each split is held in memory, by split name.

    """

    train: TrainLoader | None
    val: EvalLoader | None
    classes: tuple[str, ...]
    channels: int
    in_memory: dict[str, bool]


def _fail(loc: str, message: str, hint: str | None = None) -> PretrainError:
    return PretrainError(f"{loc}: {message}", hint=hint)


def _use_memory(dataset: BaseDataset, options: DataOptions, channels: int, loc: str) -> bool:
    shape = dataset.image_shape()
    if options.in_memory is False:
        return False
    if shape is None:
        if options.in_memory is True:
            raise _fail(loc, "in_memory = true needs images of one size known up front",
                        "Set the dataset's image_size (ImageFolder), or in_memory = \"auto\".")
        return False
    mib = len(dataset) * channels * shape[1] * shape[2] / 2**20
    return options.in_memory is True or mib <= options.in_memory_max_mb


def _check_shape(out: Tensor | list[Tensor] | Masked, image_size: int | None, loc: str) -> None:
    if image_size is None:
        return
    if isinstance(out, Masked):
        out = out.images
    first = out[0] if isinstance(out, list) else out
    h, w = first.shape[-2:]
    if (h, w) != (image_size, image_size):
        raise _fail(loc, f"the pipeline produces {h}×{w} images but data.image_size = {image_size}",
                    "Make the pipeline end at image_size (Resize/CenterCrop/RandomResizedCrop "
                    "size, or the dataset's image_size), or change data.image_size.")


def _prepare(
    spec: DatasetSpec, options: DataOptions, *, device: torch.device, seed: int,
    num_classes: int | None, in_channels: int | None, classes: tuple[str, ...] | None,
) -> tuple[_MemorySource | _LoaderSource, int, tuple[str, ...], int, bool]:
    loc = spec.loc
    try:
        dataset: BaseDataset = _build(spec.dataset)
        pipeline = Pipeline([_build(t) for t in spec.pipeline])
    except PretrainError as exc:
        if exc.message.startswith(loc):
            raise
        raise _fail(loc, exc.message, exc.hint) from exc
    names = tuple(str(c) for c in dataset.classes)
    if num_classes is not None and len(names) != num_classes:
        raise _fail(loc, f"the dataset has {len(names)} classes but the model predicts "
                    f"num_classes = {num_classes}",
                    f"Set the head's num_classes to {len(names)} (e.g. --set "
                    f"model.head.num_classes={len(names)}), or list the classes to use.")
    if classes is not None and names != classes:
        raise _fail(loc, f"its classes {list(names)[:10]} differ from data.train's "
                    f"{list(classes)[:10]}",
                    "Both splits must use one label order: give both the same `classes` list.")
    requested = dataset.requested_channels
    if in_channels is not None and requested is not None and requested != in_channels:
        raise _fail(loc, f"channels = {requested} but the model takes {in_channels}-channel "
                    "images", "Remove `channels` (images then follow the model) or change it.")
    channels = in_channels or dataset.channels
    probe: Tensor | list[Tensor] | Masked | None
    if _use_memory(dataset, options, channels, loc):
        images, labels = dataset.load_all()
        if len(labels) == 0:
            raise _fail(loc, "the dataset is empty", "Check its root/split settings.")
        memory = _MemorySource(to_channels(images, channels), labels, pipeline, device)
        # Run the pipeline once on two images: a wrong output size fails here, not mid-run.
        probe = pipeline(memory.images[:2], generator=torch.Generator(device=device))
        source: _MemorySource | _LoaderSource = memory
        size, in_memory = len(labels), True
    else:
        if len(dataset) == 0:
            raise _fail(loc, "the dataset is empty", "Check its root/split settings.")
        labels = dataset.targets
        samples = _SampleDataset(dataset, pipeline, channels, seed)
        first = samples[(0, 0)]
        probe = None if first is None else first[0]
        source = _LoaderSource(samples, options.num_workers, device)
        size, in_memory = len(dataset), False
    if int(labels.min()) < 0 or int(labels.max()) >= len(names):
        raise _fail(loc, f"labels range {int(labels.min())}..{int(labels.max())} but there are "
                    f"{len(names)} classes", "The dataset's targets must be 0..len(classes)-1.")
    if probe is not None:
        _check_shape(probe, options.image_size, loc)
    return source, size, names, channels, in_memory


def build_loaders(
    section: DataSection,
    *,
    device: torch.device,
    distributed: bool,
    rank: int,
    world_size: int,
    seed: int,
    num_classes: int | None,
    in_channels: int | None = None,
    splits: Sequence[str] = _SPLITS,
) -> Loaders:
    """Build the datasets of ``section`` and their loaders, checking the data first.

    Args:
        section: The validated ``[data]`` table.
        device: Where batches are delivered (and in-memory datasets live).
        distributed: Whether this process is one of ``world_size`` DDP ranks.
        rank: This process's rank (0 when not distributed).
        world_size: Number of processes (1 when not distributed).
        seed: Seed of the training order and augmentation (evaluation uses a fixed one).
        num_classes: Classes the model predicts; a dataset with another count is an
            error. None skips the check (self-supervised models).
        in_channels: Channels the model takes; images are converted to it
            (gray <-> RGB). None keeps the dataset's channels.
        splits: Which of ``train``/``val`` to build (``pretrain eval`` needs only val).

    Returns:
        The loaders; a split the section lacks (or not asked for) is None.

    Raises:
        PretrainError: Empty dataset, class count or channels that do not match the
            model, unreadable files, a pipeline that does not produce ``image_size``.

    """
    if not distributed:
        rank, world_size = 0, 1
    options = section.options
    if section.train is None and section.val is None:
        raise PretrainError("data: no dataset", hint="Add [data.train] and/or [data.val].")
    train = val = None
    classes: tuple[str, ...] | None = None
    channels = in_channels or 3
    memory: dict[str, bool] = {}
    if section.train is not None and "train" in splits:
        source, size, classes, channels, memory["train"] = _prepare(
            section.train, options, device=device, seed=seed, num_classes=num_classes,
            in_channels=in_channels, classes=None,
        )
        train = TrainLoader(source, size=size, batch_size=options.batch_size,
                            drop_last=options.drop_last, seed=seed, rank=rank,
                            world_size=world_size)
        if len(train) == 0:
            raise _fail(section.train.loc, f"{size} images give no batch of {options.batch_size} "
                        f"per process with drop_last", "Lower batch_size or set drop_last = false.")
    if section.val is not None and "val" in splits:
        source, size, val_classes, channels, memory["val"] = _prepare(
            section.val, options, device=device, seed=_EVAL_SEED, num_classes=num_classes,
            in_channels=in_channels, classes=classes,
        )
        classes = classes or val_classes
        val = EvalLoader(source, size=size, batch_size=options.val_batch_size or options.batch_size,
                         rank=rank, world_size=world_size)
    return Loaders(train, val, classes or (), channels, memory)
