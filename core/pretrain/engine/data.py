"""Data loading: a validated ``[data]`` section (:mod:`pretrain.spec.data_section`) -> batches.

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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from pretrain._data_contracts import stack_masked
from pretrain.assembly.assemble import build_node
from pretrain.components import (
    BaseDataset,
    BaseStreamDataset,
    Batch,
    Masked,
    Pipeline,
    SkipSample,
    mix_seed,
    to_channels,
)
from pretrain.engine.stream import StreamEvalLoader, StreamSource, StreamTrainLoader, batch_to, check_stream
from pretrain.errors import PretrainError
from pretrain.spec.context import ComponentNode
from pretrain.spec.data_section import DataOptions, DataSection, DatasetSpec

__all__ = ["EvalLoader", "Loaders", "SplitInfo", "TrainLoader", "build_loaders"]

#: Seed of evaluation-time augmentation (independent of the run's seed).
_EVAL_SEED = 0


# --------------------------------------------------------------------------- sources


def _build(obj: Any) -> Any:
    """Build a validated node; pass through objects that are already built."""
    return build_node(obj) if isinstance(obj, ComponentNode) else obj


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
    # default_collate stacks straight into shared memory inside a DataLoader worker, so
    # the batch is not copied again to reach the main process (~10 MB at 64×224²).
    return torch.utils.data.default_collate(items)  # type: ignore[no-any-return]


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
            yield batch_to(item, self.device)


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


@dataclass(frozen=True)
class SplitInfo:
    """What evaluation needs to know about a split's labels.

    Attributes:
        classes: Class names (empty for unlabelled or index-labelled data).
        labelled: Whether ``targets`` are class labels (False: all -1).
        matches: Index-labelled retrieval queries: each sample's matching gallery indices.

    """

    classes: tuple[str, ...]
    labelled: bool = True
    matches: tuple[tuple[int, ...], ...] | None = None


@dataclass
class Loaders:
    """What ``build_loaders`` returns.

    Attributes:
        train: Training batches (None without ``[data.train]``).
        val: Evaluation batches (None without ``[data.val]``).
        classes: Class names (label ``i`` is ``classes[i]``).
        channels: Channels of the yielded images.
        in_memory: Whether each split is held in memory, by split name.
        gallery: ``[data.gallery]`` batches (a dataset gallery only), if asked for.
        train_eval: The training set through the validation pipeline (kNN's default
            gallery), if asked for.
        info: Labels of each built split (``train``, ``val``, ``gallery``, ``train_eval``).

    """

    train: TrainLoader | StreamTrainLoader | None
    val: EvalLoader | StreamEvalLoader | None
    classes: tuple[str, ...]
    channels: int
    in_memory: dict[str, bool]
    gallery: EvalLoader | StreamEvalLoader | None = None
    train_eval: EvalLoader | None = None
    info: dict[str, SplitInfo] = field(default_factory=dict)


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


@dataclass
class _Prepared:
    source: _MemorySource | _LoaderSource | StreamSource
    size: int
    info: SplitInfo
    channels: int
    in_memory: bool
    dataset: BaseDataset


def _check_labels(dataset: BaseDataset, loc: str, num_classes: int | None) -> SplitInfo:
    """The split's label kind; a model with classes refuses unlabelled or index-labelled data."""
    names = tuple(str(c) for c in dataset.classes)
    matches_fn = getattr(dataset, "gallery_matches", None)
    raw_matches = matches_fn() if callable(matches_fn) else None
    matches = None if raw_matches is None else tuple(tuple(int(i) for i in m) for m in raw_matches)
    labelled = bool(getattr(dataset, "labelled", True)) and matches is None
    if num_classes is not None and not labelled:
        what = "has no labels (labels = false)" if matches is None else "is labelled by gallery index"
        raise _fail(loc, f"the dataset {what}, but the model predicts num_classes = {num_classes} classes",
                    "Use labelled data for classifiers (and for kNN), or a self-supervised model.")
    if num_classes is not None and len(names) != num_classes:
        raise _fail(loc, f"the dataset has {len(names)} classes but the model predicts "
                    f"num_classes = {num_classes}",
                    f"Set the head's num_classes to {len(names)} (e.g. --set "
                    f"model.head.num_classes={len(names)}), or list the classes to use.")
    return SplitInfo(names if labelled else (), labelled, matches)


def _prepare(
    spec: DatasetSpec, options: DataOptions, *, device: torch.device, seed: int,
    num_classes: int | None, in_channels: int | None, classes: tuple[str, ...] | None,
) -> _Prepared:
    loc = spec.loc
    try:
        dataset: BaseDataset = _build(spec.dataset)
        pipeline = Pipeline([_build(t) for t in spec.pipeline])
    except PretrainError as exc:
        if exc.message.startswith(loc):
            raise
        raise _fail(loc, exc.message, exc.hint) from exc
    info = _check_labels(dataset, loc, num_classes)
    names = info.classes
    if classes is not None and info.labelled and names != classes:
        raise _fail(loc, f"its classes {list(names)[:10]} differ from the other split's "
                    f"{list(classes)[:10]}",
                    "Both splits must use one label order: give both the same `classes` list.")
    requested = dataset.requested_channels
    if in_channels is not None and requested is not None and requested != in_channels:
        raise _fail(loc, f"channels = {requested} but the model takes {in_channels}-channel "
                    "images", "Remove `channels` (images then follow the model) or change it.")
    channels = in_channels or dataset.channels
    if isinstance(dataset, BaseStreamDataset):  # sharded streams: see pretrain.engine.stream
        stream = StreamSource(dataset, pipeline, channels, options.num_workers, device, _collate)
        probe = check_stream(stream, loc)
        if probe is not None:
            _check_shape(probe, options.image_size, loc)
        return _Prepared(stream, stream.size, info, channels, False, dataset)
    source, size, in_memory, labels = _source(dataset, pipeline, options, device, seed, channels, loc)
    if info.labelled and (int(labels.min()) < 0 or int(labels.max()) >= len(names)):
        raise _fail(loc, f"labels range {int(labels.min())}..{int(labels.max())} but there are "
                    f"{len(names)} classes", "The dataset's targets must be 0..len(classes)-1.")
    return _Prepared(source, size, info, channels, in_memory, dataset)


def _source(
    dataset: BaseDataset, pipeline: Pipeline, options: DataOptions, device: torch.device, seed: int,
    channels: int, loc: str, memory: _MemorySource | None = None,
) -> tuple[_MemorySource | _LoaderSource, int, bool, Tensor]:
    """A batch source over ``dataset`` with ``pipeline``, its pipeline output checked on a probe."""
    if memory is not None or _use_memory(dataset, options, channels, loc):
        if memory is None:
            images, labels = dataset.load_all()
            if len(labels) == 0:
                raise _fail(loc, "the dataset is empty", "Check its root/split settings.")
            memory = _MemorySource(to_channels(images, channels), labels, pipeline, device)
        else:  # another pipeline over images already held in memory
            memory = _MemorySource(memory.images, memory.labels, pipeline, device)
        # Run the pipeline once on two images: a wrong output size fails here, not mid-run.
        _check_shape(pipeline(memory.images[:2], generator=torch.Generator(device=device)), options.image_size, loc)
        return memory, len(memory.labels), True, memory.labels
    if len(dataset) == 0:
        raise _fail(loc, "the dataset is empty", "Check its root/split settings.")
    samples = _SampleDataset(dataset, pipeline, channels, seed)
    first = samples[(0, 0)]
    if first is not None:
        _check_shape(first[0], options.image_size, loc)
    return _LoaderSource(samples, options.num_workers, device), len(dataset), False, dataset.targets


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
    splits: Sequence[str] = ("train", "val"),
    retrieval: bool = False,
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
        splits: Which of ``train``, ``val``, ``gallery`` (a dataset ``[data.gallery]``) and
            ``train_eval`` (the training set through the validation pipeline) to build.
        retrieval: The model is a retriever: ``num_classes`` (its head's training
            classes) applies to ``train`` only; ``val`` and ``gallery`` share their own.

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
    train = val = gallery = train_eval = None
    classes: tuple[str, ...] | None = None
    channels = in_channels or 3
    memory: dict[str, bool] = {}
    info: dict[str, SplitInfo] = {}
    eval_batch = options.val_batch_size or options.batch_size
    built_train: _Prepared | None = None

    def eval_loader(prepared: _Prepared) -> EvalLoader | StreamEvalLoader:
        if isinstance(prepared.source, StreamSource):
            return StreamEvalLoader(prepared.source, batch_size=eval_batch, rank=rank, world_size=world_size,
                                    seed=_EVAL_SEED)
        return EvalLoader(prepared.source, size=prepared.size, batch_size=eval_batch, rank=rank,
                          world_size=world_size)

    if section.train is not None and ("train" in splits or "train_eval" in splits):
        built_train = _prepare(section.train, options, device=device, seed=seed, num_classes=num_classes,
                               in_channels=in_channels, classes=None)
        classes, channels, info["train"] = built_train.info.classes, built_train.channels, built_train.info
        if "train" in splits:
            memory["train"] = built_train.in_memory
            held_train = built_train.source
            train = (StreamTrainLoader(held_train, batch_size=options.batch_size, drop_last=options.drop_last,
                                       seed=seed, rank=rank, world_size=world_size)
                     if isinstance(held_train, StreamSource) else
                     TrainLoader(held_train, size=built_train.size, batch_size=options.batch_size,
                                 drop_last=options.drop_last, seed=seed, rank=rank, world_size=world_size))
            if len(train) == 0:
                raise _fail(section.train.loc, f"{built_train.size} images give no batch of "
                            f"{options.batch_size} per process with drop_last",
                            "Lower batch_size or set drop_last = false.")
    # A retriever's val/gallery hold other identities than its training classes.
    eval_classes = None if retrieval else classes
    eval_num_classes = None if retrieval else num_classes
    if section.val is not None and "val" in splits:
        prepared = _prepare(section.val, options, device=device, seed=_EVAL_SEED, num_classes=eval_num_classes,
                            in_channels=in_channels, classes=eval_classes)
        channels, memory["val"], info["val"] = prepared.channels, prepared.in_memory, prepared.info
        classes = classes or prepared.info.classes
        val = eval_loader(prepared)
    if isinstance(section.gallery, DatasetSpec) and "gallery" in splits:
        query = info.get("val")
        prepared = _prepare(section.gallery, options, device=device, seed=_EVAL_SEED, num_classes=None,
                            in_channels=in_channels,
                            classes=query.classes if query is not None and query.labelled else None)
        memory["gallery"], info["gallery"] = prepared.in_memory, prepared.info
        gallery = eval_loader(prepared)
    if built_train is not None and section.train is not None and "train_eval" in splits:
        if isinstance(built_train.source, StreamSource):
            raise _fail(section.train.loc, "kNN's default gallery is the training set read again through "
                        "data.val's pipeline, which a sharded stream does not support",
                        "Give the kNN gallery as [data.gallery] (a dataset or an embeddings file).")
        # kNN's default gallery: the training images through the validation pipeline.
        pipeline = Pipeline([_build(t) for t in section.val.pipeline] if section.val is not None else [])
        held = built_train.source if isinstance(built_train.source, _MemorySource) else None
        source, size, _, _ = _source(built_train.dataset, pipeline, options, device, _EVAL_SEED,
                                     built_train.channels, f"{section.train.loc} (through data.val's pipeline)",
                                     memory=held)
        info["train_eval"] = built_train.info
        train_eval = EvalLoader(source, size=size, batch_size=eval_batch, rank=rank, world_size=world_size)
    return Loaders(train, val, classes or (), channels, memory, gallery, train_eval, info)
