"""``WebDataset``: images streamed from WebDataset tar shards (``pip install 'pretrain[webdataset]'``).

A shard is a tar file whose members are grouped into samples by their name without
extension (``000123.jpg`` + ``000123.cls`` = sample ``000123``). Images are
``.jpg``/``.jpeg``/``.png``/``.webp`` (any format Pillow reads, under those names);
labels are ``.cls`` (an integer) or ``.json`` (``{"label": int}``), or absent with
``unlabelled = true`` (self-supervised pretraining).

Reading uses the ``webdataset`` package's own pieces: ``gopen`` opens any URL scheme it
knows (local paths, ``file:``, ``pipe:aws s3 cp ... -``, ``http(s)://`` through curl,
``gs://``, ``hf://`` ...), ``tar_file_iterator``/``group_by_keys`` turn the byte
stream into samples, and its brace expansion turns ``train-{000000..000099}.tar`` into
a list. Its high-level ``WebDataset`` pipeline is not used: its shard splitting and
shuffling cannot promise "every sample once per epoch" nor an exact mid-epoch resume,
which the engine's stream loaders (:mod:`pretrain.engine.stream`) provide from the
per-shard sample counts this class supplies.

Counts (and class names) come from the ``index.json`` that ``pretrain shard`` writes
beside the shards; without one, every shard is read once when the dataset is built
to count its samples (fine for local files, slow for remote ones).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field
from torch import Tensor

from pretrain.components import BaseStreamDataset, ShardInfo, SkipSample
from pretrain.errors import PretrainError

__all__ = ["IMAGE_KEYS", "INDEX_FORMAT", "WebDataset", "shard_samples"]

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
#: ``format`` of the index.json ``pretrain shard`` writes (the CLI writes the same string).
INDEX_FORMAT = "pretrain.webdataset/1"


def _wds() -> Any:
    if importlib.util.find_spec("webdataset") is None:
        raise PretrainError("the WebDataset dataset needs the webdataset package, which is not installed",
                            hint="pip install 'pretrain[webdataset]'")
    import webdataset

    return webdataset


def shard_samples(url: str) -> Iterator[dict[str, Any]]:
    """Every sample of one shard as ``{"__key__": ..., "jpg": bytes, "cls": bytes, ...}``, in stored order."""
    wds = _wds()
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    stream = wds.gopen(url, "rb")
    try:
        files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
        yield from group_by_keys(files)
    finally:
        stream.close()


def _decode_label(sample: dict[str, Any]) -> int | None:
    if "cls" in sample:
        return int(bytes(sample["cls"]).decode("utf-8").strip())
    if "json" in sample:
        doc = json.loads(bytes(sample["json"]).decode("utf-8"))
        for key in ("label", "cls", "class"):
            if isinstance(doc, dict) and isinstance(doc.get(key), int):
                return int(doc[key])
    return None


class WebDataset(BaseStreamDataset):
    """Images (and labels) streamed from WebDataset tar shards.

    Args:
        shards: A brace pattern (``data/train-{000000..000009}.tar``), one URL, or a list
            of them; local paths or any URL ``webdataset.gopen`` opens. Default: the
            shards listed by ``index``.
        index: An ``index.json`` written by ``pretrain shard`` (sample counts, classes).
            Default: ``index.json`` beside the first local shard, if there is one.
        classes: Class names in label order (default: the index's). Without an index
            and without classes, labels must be 0..num_classes-1 with ``num_classes`` set.
        num_classes: Number of classes when no names are known (names become "0".."K-1").
        unlabelled: Samples have no label (self-supervised pretraining); every label is 0.
        shuffle_buffer: Raw samples each training worker shuffles within (0 = off).
        image_size: Resize (shorter side) and centre-crop every image to this size when decoding.
        channels: 1 or 3 channels; default: what the model takes.
        skip_unreadable: Drop samples whose image cannot be decoded instead of failing.

    """

    example_config: ClassVar[dict[str, Any]] = {"shards": "data/shards/train-{000000..000003}.tar"}

    def __init__(
        self,
        *,
        shards: str | list[str] | None = None,
        index: str | None = None,
        classes: list[str] | None = None,
        num_classes: Annotated[int, Field(gt=0)] | None = None,
        unlabelled: bool = False,
        shuffle_buffer: Annotated[int, Field(ge=0)] = 1000,
        image_size: Annotated[int, Field(gt=0)] | None = None,
        channels: Literal[1, 3] | None = None,
        skip_unreadable: bool = False,
    ) -> None:
        _wds()
        self.shuffle_buffer = shuffle_buffer
        self.image_size = image_size
        self.requested_channels = channels
        self._channels = channels or 3
        self.unlabelled = unlabelled
        self.skip_unreadable = skip_unreadable
        urls = self._expand(shards) if shards is not None else []
        doc = self._read_index(index, urls)
        if not urls and doc is not None:
            base = doc["__base__"]
            urls = [u if "://" in u or os.path.isabs(u) or u.startswith("pipe:") else os.path.join(base, u)
                    for u in (s["url"] for s in doc["shards"])]
        if not urls:
            raise PretrainError("WebDataset has no shards", hint="Set shards = \"path/train-{000000..000009}.tar\" "
                                "(or index = \"path/index.json\" written by pretrain shard).")
        counts = self._counts(urls, doc)
        self._shards = [ShardInfo(u, n) for u, n in zip(urls, counts, strict=True)]
        if unlabelled:
            self.classes: Sequence[str] = ()
        elif classes is not None:
            self.classes = tuple(classes)
        elif doc is not None and doc.get("classes"):
            self.classes = tuple(str(c) for c in doc["classes"])
        elif num_classes is not None:
            self.classes = tuple(str(i) for i in range(num_classes))
        else:
            raise PretrainError(
                "WebDataset does not know the class names: there is no index.json with classes",
                hint="Set classes = [...] (label order) or num_classes = K, or unlabelled = true for "
                "self-supervised training; pretrain shard writes an index.json with the classes.",
            )

    @staticmethod
    def _expand(shards: str | list[str]) -> list[str]:
        from webdataset.shardlists import expand_urls

        items = [shards] if isinstance(shards, str) else list(shards)
        return [u for item in items for u in expand_urls(item)]

    @staticmethod
    def _read_index(index: str | None, urls: list[str]) -> dict[str, Any] | None:
        if index is None and urls and "://" not in urls[0] and not urls[0].startswith("pipe:"):
            beside = Path(urls[0]).expanduser().parent / "index.json"
            index = str(beside) if beside.is_file() else None
        if index is None:
            return None
        try:
            if "://" in index or index.startswith("pipe:"):
                stream = _wds().gopen(index, "rb")
                text = stream.read().decode("utf-8")
                stream.close()
                base = index.rsplit("/", 1)[0]
            else:
                path = Path(index).expanduser()
                text, base = path.read_text(encoding="utf-8"), str(path.parent)
            doc = json.loads(text)
            if doc.get("format") != INDEX_FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, expected {INDEX_FORMAT!r}")
        except (OSError, ValueError, AttributeError) as exc:
            raise PretrainError(f"cannot read the WebDataset index {index}: {exc}",
                                hint="Point index at the index.json pretrain shard wrote, or remove it.") from None
        doc["__base__"] = base
        return dict(doc)

    @staticmethod
    def _counts(urls: list[str], doc: dict[str, Any] | None) -> list[int]:
        known: dict[str, int] = {}
        if doc is not None:
            for s in doc["shards"]:
                known[os.path.basename(s["url"])] = int(s["samples"])
        counts = []
        for url in urls:
            name = os.path.basename(url)
            if name in known:
                counts.append(known[name])
                continue
            try:  # no index entry: count by reading the shard once
                counts.append(sum(1 for _ in shard_samples(url)))
            except Exception as exc:
                raise PretrainError(f"cannot read WebDataset shard {url}: {type(exc).__name__}: {exc}",
                                    hint="Check the shard pattern/URL and that the file is a tar archive.") from None
        return counts

    # ------------------------------------------------------------------ contract

    def shards(self) -> Sequence[ShardInfo]:
        """The shards with their sample counts."""
        return self._shards

    @property
    def channels(self) -> int:
        """3 (RGB) unless ``channels = 1``."""
        return self._channels

    def read(self, url: str, start: int, stop: int) -> Iterator[Any]:
        """Raw samples ``start``..``stop - 1`` of ``url`` (the ones before ``start`` are read and dropped)."""
        for i, sample in enumerate(shard_samples(url)):
            if i >= stop:
                return
            if i >= start:
                yield sample

    def decode(self, sample: Any) -> tuple[Tensor, int]:
        """Decode the image (and label) of a raw sample."""
        from pretrain_builtins.datasets.image_folder import decode_image

        key = next((k for k in IMAGE_KEYS if k in sample), None)
        where = f"sample {sample.get('__key__')!r} of {sample.get('__url__')}"
        if key is None:
            if self.skip_unreadable:
                raise SkipSample(where)
            raise PretrainError(f"{where} has no image (.{', .'.join(IMAGE_KEYS)}); it has {sorted(sample)}",
                                hint="Write shards with pretrain shard, or set skip_unreadable = true.")
        try:
            image = decode_image(io.BytesIO(sample[key]), self._channels, self.image_size, extension=f".{key}")
        except Exception as exc:
            if self.skip_unreadable:
                raise SkipSample(where) from exc
            raise PretrainError(f"cannot decode the image of {where}: {type(exc).__name__}: {exc}",
                                hint="Fix the shard, or set skip_unreadable = true.") from None
        if self.unlabelled:
            return image, 0
        label = _decode_label(sample)
        if label is None or not 0 <= label < len(self.classes):
            raise PretrainError(
                f"{where} has {'no label' if label is None else f'label {label}'} (expected .cls or .json with "
                f"0..{len(self.classes) - 1})", hint="Set unlabelled = true to train without labels.")
        return image, label

    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, S, S) with ``image_size``, else None."""
        return None if self.image_size is None else (self._channels, self.image_size, self.image_size)

    def __repr__(self) -> str:
        return f"WebDataset({len(self._shards)} shards, {len(self)} samples, {len(self.classes)} classes)"
