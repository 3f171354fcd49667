"""Loaders over streaming (sharded) datasets: exact epochs without random access.

A :class:`~pretrain.components.BaseStreamDataset` knows its shards and their sample
counts. An epoch is planned from ``(seed, epoch)`` alone:

1. **Shard order**: a permutation of the shards (training; evaluation keeps the
   stored order). Concatenated, they form the epoch's *global sequence* of ``N``
   samples; a sample's position in it seeds its augmentation.
2. **Ranks**: rank ``r`` of ``W`` takes the contiguous positions
   ``[r*Q, (r+1)*Q)`` with ``Q = ceil(N/W)`` (wrapping around to the start, like
   ``DistributedSampler``'s padding, when ``W`` does not divide ``N``), or
   ``Q = floor(N/W)`` with ``drop_last``. Contiguous ranges mean each rank opens only
   its own shards (plus at most two it shares with a neighbour).
3. **Batches and workers**: the rank's ``Q`` samples make ``ceil(Q/B)`` batches
   (``floor`` with ``drop_last``); batch ``g`` belongs to DataLoader worker
   ``g % num_workers``, and each worker reads a contiguous slice of the rank's range
   holding exactly its batches' samples. A worker shuffles through a buffer of
   ``shuffle_buffer`` raw samples seeded by ``(seed, epoch, rank, worker)``.
4. **Order**: batches are yielded by their number ``g`` (out-of-order arrivals from
   the workers wait in a small buffer), so the sequence never depends on timing.

Every sample of the epoch is therefore used exactly once per epoch over all ranks
and workers (plus the documented padding when ``W`` does not divide ``N``).
``iter_from(epoch, k)`` resumes at batch ``k``: each worker re-reads its slice and
discards, undecoded, the raw samples of its batches before ``k``, so the resumed
batches are bit-identical to an uninterrupted run's as long as the world size,
``num_workers``, ``batch_size`` and ``shuffle_buffer`` are unchanged. The cost of a
resume is re-reading (not decoding) the part of the epoch already done.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pretrain.components import BaseStreamDataset, Masked, Pipeline, ShardInfo, SkipSample, mix_seed, to_channels
from pretrain.errors import PretrainError

__all__ = ["StreamEvalLoader", "StreamSource", "StreamTrainLoader", "batch_to", "check_stream", "plan_pieces"]


@dataclass(frozen=True)
class _Piece:
    url: str
    start: int  # first sample in the shard
    stop: int  # one past the last
    position: int  # global position of ``start`` in the epoch's sequence


def _shard_order(shards: list[ShardInfo], seed: int, epoch: int, shuffle: bool) -> list[ShardInfo]:
    if not shuffle:
        return list(shards)
    generator = torch.Generator().manual_seed(mix_seed(seed, epoch, 0x5A4D))
    return [shards[i] for i in torch.randperm(len(shards), generator=generator).tolist()]


def plan_pieces(order: list[ShardInfo], start: int, stop: int) -> list[_Piece]:
    """The shard slices that hold global positions ``[start, stop)`` (``stop`` may pass ``N``: it wraps)."""
    total = sum(s.samples for s in order)
    pieces: list[_Piece] = []
    while start < stop:
        base = (start // total) * total
        lo, hi = start - base, min(stop - base, total)
        offset = 0
        for shard in order:
            s0, s1 = max(lo, offset), min(hi, offset + shard.samples)
            if s0 < s1:
                pieces.append(_Piece(shard.url, s0 - offset, s1 - offset, s0))
            offset += shard.samples
        start = base + hi
    return pieces


class _StreamWorkers(torch.utils.data.IterableDataset[tuple[int, Any]]):
    """Runs inside each DataLoader worker: reads its slice, shuffles, decodes, yields numbered batches."""

    def __init__(self, source: StreamSource, *, rank: int, world_size: int, batch_size: int, drop_last: bool,
                 shuffle: bool, seed: int) -> None:
        self.source, self.rank, self.world_size = source, rank, world_size
        self.batch_size, self.drop_last, self.shuffle, self.seed = batch_size, drop_last, shuffle, seed
        # (epoch, start batch) in shared memory: the DataLoader's workers persist across
        # epochs (forking them again cost ~15% of bench/data.py's 512-image epoch) and
        # read the values set here when each epoch's iteration starts.
        self._state = torch.zeros(2, dtype=torch.int64)
        self._state.share_memory_()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        self.workers = max(1, source.num_workers)
        self.loader: torch.utils.data.DataLoader[Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Spawned workers get a pickled copy: without the loader (and its processes).
        return {**self.__dict__, "loader": None}

    @property
    def epoch(self) -> int:
        """The epoch being read (seeds the shard order, the shuffle and the augmentation)."""
        return int(self._state[0])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._state[0] = value

    @property
    def start_batch(self) -> int:
        """The first batch of the epoch to yield (a resume point)."""
        return int(self._state[1])

    @start_batch.setter
    def start_batch(self, value: int) -> None:
        self._state[1] = value

    def rank_range(self) -> tuple[int, int]:
        n, w = self.source.size, self.world_size
        if not self.shuffle:  # evaluation: a disjoint split, no padding
            return self.rank * n // w, (self.rank + 1) * n // w
        per = n // w if self.drop_last else -(-n // w)
        return self.rank * per, (self.rank + 1) * per

    def num_batches(self) -> int:
        lo, hi = self.rank_range()
        q, b = hi - lo, self.batch_size
        return q // b if self.drop_last and self.shuffle else -(-q // b)

    def _worker_slice(self, worker: int) -> tuple[int, int, list[int]]:
        """(first position, one past the last, its batches' sizes) of ``worker`` in the rank's range."""
        lo, hi = self.rank_range()
        nb, b = self.num_batches(), self.batch_size
        used = min(hi - lo, nb * b)

        def size(g: int) -> int:
            return min(b, used - g * b)

        start = lo + sum(size(g) for g in range(nb) if g % self.workers < worker)
        mine = [size(g) for g in range(nb) if g % self.workers == worker]
        return start, start + sum(mine), mine

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        start, stop, sizes = self._worker_slice(worker)
        order = _shard_order(self.source.shards, self.seed, self.epoch, self.shuffle)
        raw = self._raw(order, start, stop)
        if self.shuffle and self.source.shuffle_buffer > 1:
            raw = _shuffled(raw, self.source.shuffle_buffer, mix_seed(self.seed, self.epoch, self.rank, worker))
        # Worker's j-th batch is the epoch's batch g = j * workers + worker.
        skip = sum(1 for j in range(len(sizes)) if j * self.workers + worker < self.start_batch)
        for j, size in enumerate(sizes):
            items = [next(raw) for _ in range(size)]
            if j < skip:
                continue  # resuming: these samples were used before the interruption
            batch = self.source.collate([self.source.sample(item, self.seed, self.epoch) for item in items])
            yield j * self.workers + worker, batch

    def _raw(self, order: list[ShardInfo], start: int, stop: int) -> Iterator[tuple[int, Any]]:
        for piece in plan_pieces(order, start, stop):
            count = 0
            for i, sample in enumerate(self.source.dataset.read(piece.url, piece.start, piece.stop)):
                yield piece.position + i, sample
                count += 1
            if count != piece.stop - piece.start:
                raise PretrainError(
                    f"shard {piece.url} ended after {piece.start + count} samples, but {piece.stop} were "
                    "expected (its index or count is wrong)",
                    hint="Rewrite the shard's index (pretrain shard writes index.json), or drop the index so "
                    "the shards are counted.",
                )


def _shuffled(items: Iterator[tuple[int, Any]], size: int, seed: int) -> Iterator[tuple[int, Any]]:
    """A seeded shuffle buffer: fill ``size`` items, then emit a random one per item read."""
    rng = random.Random(seed)
    buffer: list[tuple[int, Any]] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        out = buffer[i]
        buffer[i] = item
        yield out
    rng.shuffle(buffer)
    yield from buffer


def batch_to(batch: tuple[Any, Tensor], device: torch.device) -> tuple[Any, Tensor]:
    """A collated ``(images, labels)`` batch on ``device`` (images: a tensor, views or ``Masked``)."""
    images, labels = batch
    if isinstance(images, list):
        images = [v.to(device, non_blocking=True) for v in images]
    else:  # a tensor or Masked
        images = images.to(device, non_blocking=True)
    return images, labels.to(device, non_blocking=True)


class StreamSource:
    """A streaming dataset with its pipeline, ready to make train and eval loaders.

    Args:
        dataset: The streaming dataset.
        pipeline: Transforms applied to every decoded image.
        channels: Channels the images are converted to.
        num_workers: DataLoader worker processes (0: read in this process).
        device: Where batches are delivered.
        collate: Stacks a list of samples (``None`` = skipped) into a batch, as the map-style path does.

    """

    def __init__(self, dataset: BaseStreamDataset, pipeline: Pipeline, channels: int, num_workers: int,
                 device: torch.device, collate: Callable[[list[Any]], Any]) -> None:
        self.dataset, self.pipeline, self.channels, self.collate = dataset, pipeline, channels, collate
        self.num_workers, self.device = num_workers, device
        self.shards = list(dataset.shards())
        self.size = sum(s.samples for s in self.shards)
        self.shuffle_buffer = int(getattr(dataset, "shuffle_buffer", 0) or 0)

    def sample(self, item: tuple[int, Any], seed: int, epoch: int) -> tuple[Any, int] | None:
        """Decode and augment one raw sample; its augmentation is seeded by its global position."""
        position, raw = item
        try:
            image, label = self.dataset.decode(raw)
        except SkipSample:
            return None
        out: Any = to_channels(image, self.channels)
        if len(self.pipeline):
            out = self.pipeline(out, generator=torch.Generator().manual_seed(mix_seed(seed, epoch, position)))
        return out, label

    def first(self) -> Any:
        """The first sample, decoded and transformed (a probe of the pipeline's output size)."""
        shard = self.shards[0]
        raw = next(iter(self.dataset.read(shard.url, 0, 1)))
        out = self.sample((0, raw), 0, 0)
        return None if out is None else out[0]

    def _loader(self, workers: _StreamWorkers) -> torch.utils.data.DataLoader[Any]:
        # One per train/eval loader, its workers persistent: each epoch's iteration makes
        # them call ``__iter__`` again, reading the epoch and resume point from ``workers``'
        # shared-memory state.
        if workers.loader is None:
            workers.loader = torch.utils.data.DataLoader(
                workers, batch_size=None, num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                persistent_workers=self.num_workers > 0)
        return workers.loader

    def batches(self, workers: _StreamWorkers) -> Iterator[Any]:
        """The epoch's batches from ``workers.start_batch`` on, in batch-number order, on the device."""
        pending: dict[int, Any] = {}
        expected = workers.start_batch
        for number, batch in self._loader(workers):
            pending[number] = batch
            while expected in pending:
                ready = pending.pop(expected)
                expected += 1
                if ready is None:  # every sample of the batch was skipped
                    continue
                yield batch_to(ready, self.device)


class StreamTrainLoader:
    """Training batches of one rank over a stream (the ``TrainLoader`` interface)."""

    def __init__(self, source: StreamSource, *, batch_size: int, drop_last: bool, seed: int, rank: int,
                 world_size: int) -> None:
        self._source = source
        self._workers = _StreamWorkers(source, rank=rank, world_size=world_size, batch_size=batch_size,
                                       drop_last=drop_last, shuffle=True, seed=seed)
        self.size, self.batch_size, self.seed, self.rank = source.size, batch_size, seed, rank
        lo, hi = self._workers.rank_range()
        #: Samples this rank trains on per epoch.
        self.num_samples = min(hi - lo, len(self) * batch_size) if drop_last else hi - lo
        self.epoch = 0

    def __len__(self) -> int:
        return self._workers.num_batches()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch ``__iter__`` yields."""
        self.epoch = epoch

    def iter_from(self, epoch: int, start_batch: int = 0) -> Iterator[Any]:
        """Batches ``start_batch, ...`` of ``epoch``, identical to an uninterrupted iteration's."""
        self.epoch = epoch
        self._workers.epoch, self._workers.start_batch = epoch, start_batch
        yield from self._source.batches(self._workers)

    def __iter__(self) -> Iterator[Any]:
        return self.iter_from(self.epoch, 0)


class StreamEvalLoader:
    """Evaluation batches of one rank over a stream: stored order, a disjoint split, no padding."""

    def __init__(self, source: StreamSource, *, batch_size: int, rank: int, world_size: int, seed: int) -> None:
        self._source = source
        self._workers = _StreamWorkers(source, rank=rank, world_size=world_size, batch_size=batch_size,
                                       drop_last=False, shuffle=False, seed=seed)
        self._workers.epoch = -1
        lo, hi = self._workers.rank_range()
        self.batch_size, self.rank = batch_size, rank
        #: Real samples of this rank (sum over ranks = ``total_samples``).
        self.num_samples = hi - lo
        self.total_samples = source.size

    def __len__(self) -> int:
        return self._workers.num_batches()

    def __iter__(self) -> Iterator[Any]:
        self._workers.start_batch = 0
        return self._source.batches(self._workers)


def check_stream(source: StreamSource, loc: str) -> Tensor | list[Tensor] | Masked | None:
    """Refuse an empty stream; return the first sample's output (to check its size)."""
    if source.size == 0 or not source.shards:
        raise PretrainError(f"{loc}: the streaming dataset has no samples",
                            hint="Check its shard pattern (and that the shards are not empty).")
    return source.first()  # type: ignore[no-any-return]
