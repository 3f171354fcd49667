"""``InShop``: DeepFashion In-shop Clothes Retrieval (train / query / gallery splits).

Provenance: MMPretrain ``datasets/inshop.py`` (same fields and split semantics).
Layout under ``data_root`` (as distributed)::

    Eval/list_eval_partition.txt     image_name item_id evaluation_status (after 2 header lines)
    Img/img/WOMEN/Dresses/id_00000002/02_1_front.jpg ...

- ``train``: 25,882 images; the label is the item id (3,997 classes, in order of
  first appearance);
- ``gallery``: 12,612 images, unlabelled (index-labelled retrieval: queries name them);
- ``query``: 14,218 images; each lists the indices of the gallery images of its item
  (:meth:`InShop.gallery_matches`), and its label is its own index.

Differences from MMPretrain: a query whose item has no gallery image matches nothing
(it scores 0) instead of raising ``KeyError``; a missing annotation file or image
is a clear error naming the path.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from pretrain.components import BaseDataset
from pretrain.errors import PretrainError
from pretrain_builtins.datasets.image_folder import decode_image

__all__ = ["InShop", "parse_partition"]


def parse_partition(
    lines: list[str], path: str,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """(image, item id) pairs of the train, gallery and query splits, in file order.

    Raises:
        PretrainError: A line does not have three fields or an unknown status.

    """
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "gallery": [], "query": []}
    for number, line in enumerate(lines[2:], 3):  # line 1: the count, line 2: the column names
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3 or fields[2] not in splits:
            raise PretrainError(f"{path} line {number}: expected 'image_name item_id train|query|gallery', "
                                f"got {line.strip()!r}", hint="Use the file from the In-shop benchmark's Eval/.")
        splits[fields[2]].append((fields[0], fields[1]))
    return splits["train"], splits["gallery"], splits["query"]


class InShop(BaseDataset):
    """DeepFashion In-shop retrieval: ``train`` (item-id classes), ``query`` and ``gallery`` splits.

    Queries are index-labelled: each lists the gallery images of its item, which is
    what ``retrieval/Recall@K`` and ``retrieval/mAP@K`` count as matches.

    Args:
        data_root: The benchmark folder (holding ``Eval/`` and ``Img/``).
        split: ``train``, ``query`` or ``gallery``.
        data_prefix: Folder of the images, relative to data_root.
        ann_file: The partition file, relative to data_root.
        image_size: Resize (shorter side, then centre crop) every image to
            image_size x image_size when decoding (lets the data live in memory).
        channels: 1 or 3 channels; default: what the model takes.

    """

    example_config: ClassVar[dict[str, Any]] = {"data_root": "data/inshop"}

    def __init__(
        self,
        *,
        data_root: str,
        split: Literal["train", "query", "gallery"] = "train",
        data_prefix: str = "Img",
        ann_file: str = "Eval/list_eval_partition.txt",
        image_size: Annotated[int, Field(gt=0)] | None = None,
        channels: Literal[1, 3] | None = None,
    ) -> None:
        root = Path(data_root).expanduser()
        ann = root / ann_file
        if not ann.is_file():
            raise PretrainError(f"InShop annotation file {str(ann)!r} does not exist",
                                hint="Point data_root at the In-shop benchmark folder (with Eval/ and Img/).")
        train, gallery, query = parse_partition(ann.read_text(encoding="utf-8").splitlines(), str(ann))
        self.split, self.image_size = split, image_size
        self.requested_channels = channels
        self._channels = channels or 3
        prefix = root / data_prefix
        self._matches: tuple[tuple[int, ...], ...] | None = None
        if split == "train":
            ids: dict[str, int] = {}
            for _, item in train:
                ids.setdefault(item, len(ids))
            self.classes = tuple(ids)
            rows, labels = train, [ids[item] for _, item in train]
        elif split == "gallery":
            self.classes, self.labelled = (), False
            rows, labels = gallery, [-1] * len(gallery)
        else:
            by_item: dict[str, list[int]] = {}
            for index, (_, item) in enumerate(gallery):
                by_item.setdefault(item, []).append(index)
            self.classes = ()
            self._matches = tuple(tuple(by_item.get(item, ())) for _, item in query)
            rows, labels = query, list(range(len(query)))
        self.files = [str(prefix / name) for name, _ in rows]
        self._targets = torch.tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def targets(self) -> Tensor:
        """Item-id classes (train), -1 (gallery) or the query's own index (query)."""
        return self._targets

    @property
    def channels(self) -> int:
        """3 (RGB) unless ``channels = 1``."""
        return self._channels

    def gallery_matches(self) -> tuple[tuple[int, ...], ...] | None:
        """The query split: each query's gallery indices (same item); None otherwise."""
        return self._matches

    def load_image(self, index: int) -> Tensor:
        """Decode image ``index`` as uint8 (C, H, W).

        Raises:
            PretrainError: The file is missing or unreadable.

        """
        path = self.files[index]
        try:
            return decode_image(path, self._channels, self.image_size)
        except (OSError, ValueError, SyntaxError) as exc:
            raise PretrainError(f"cannot read InShop image {path!r}: {type(exc).__name__}: {exc}",
                                hint="Unpack Img/img.zip under data_root/Img (or fix data_prefix).") from exc

    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, image_size, image_size) when ``image_size`` is set, else None (sizes vary)."""
        return None if self.image_size is None else (self._channels, self.image_size, self.image_size)

    def load_all(self) -> tuple[Tensor, Tensor]:
        """Decode every image (in threads) into uint8 (N, C, S, S); needs ``image_size``."""
        if self.image_size is None:
            raise PretrainError("InShop.load_all needs image_size (the images differ in size)",
                                hint="Set image_size, or let the engine use a DataLoader (in_memory = false).")
        with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 2)) as pool:
            images = list(pool.map(self.load_image, range(len(self))))
        if not images:
            return torch.empty(0, self._channels, self.image_size, self.image_size, dtype=torch.uint8), self._targets
        return torch.stack(images), self._targets

    def __repr__(self) -> str:
        return f"InShop(split={self.split!r}, {len(self)} images)"
