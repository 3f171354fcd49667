"""The bundled default dataset: UCI optical recognition of handwritten digits (8×8).

Source: ``data/digits.csv.gz`` is byte-for-byte scikit-learn's copy
(``sklearn/datasets/data/digits.csv.gz``, as read by ``sklearn.datasets.load_digits``),
the test set of the UCI ML "Optical Recognition of Handwritten Digits" dataset by
E. Alpaydin and C. Kaynak (1998), licensed CC BY 4.0; see ``data/ATTRIBUTION.md``.
1,797 rows of 64 pixel values (0..16, row-major 8×8) followed by the label 0..9.

The train/val split is fixed and independent of any RNG library: within each
class, samples are ranked by the BLAKE2b hash of ``"pretrain-digits/<row>"`` and
the first ``round(0.2 * class_size)`` form ``val`` (359 images); the other 1,438
form ``train``. Both keep file order. The ranking never changes, so results are
comparable across versions and machines.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from importlib import resources
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from pretrain_builtins.datasets._in_memory import InMemoryDataset

__all__ = ["DIGITS_FILE", "Digits", "digits_split"]

#: Bundled data file, inside this package.
DIGITS_FILE = "data/digits.csv.gz"
#: Fraction of every class that goes to ``val``.
VAL_FRACTION = 0.2


@functools.cache
def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    """Pixels uint8 (1797, 8, 8) in 0..16 and labels int64 (1797,), from the bundled file."""
    with resources.files(__package__).joinpath(DIGITS_FILE).open("rb") as raw, gzip.open(raw) as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    if table.shape != (1797, 65):  # pragma: no cover - a damaged installation
        raise RuntimeError(f"{DIGITS_FILE} holds {table.shape}, expected (1797, 65); reinstall")
    table.flags.writeable = False
    return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)


def _rank_key(row: int) -> bytes:
    return hashlib.blake2b(f"pretrain-digits/{row}".encode(), digest_size=8).digest()


@functools.cache
def digits_split(split: Literal["train", "val", "all"]) -> np.ndarray:
    """Row indices (ascending) of ``split`` in the bundled file (see the module docstring)."""
    _, labels = _load_raw()
    if split == "all":
        return np.arange(len(labels))
    val: list[int] = []
    for cls in range(10):
        rows = np.flatnonzero(labels == cls).tolist()
        ranked = sorted(rows, key=_rank_key)
        val += ranked[: round(VAL_FRACTION * len(rows))]
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[val] = True
    return np.flatnonzero(is_val if split == "val" else ~is_val)


class Digits(InMemoryDataset):
    """Handwritten digits 0-9 (UCI, 1,797 8×8 images), bundled: no download, no scikit-learn.

    Pixel values 0..16 are scaled to 0..255 and the images upsampled to
    ``image_size`` so that ordinary CNNs apply. ``train`` (1,438 images) and ``val``
    (359) are a fixed stratified 80/20 split; ``all`` is the whole file.

    Args:
        split: Which images: ``train``, ``val`` or ``all``.
        image_size: Side of the (square) images, upsampled from 8×8.
        interpolation: Upsampling filter.
        channels: 1 or 3 channels (gray replicated); default: what the model takes.

    """

    classes = tuple(str(d) for d in range(10))

    def __init__(
        self,
        *,
        split: Literal["train", "val", "all"] = "train",
        image_size: Annotated[int, Field(ge=8, le=512)] = 32,
        interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear",
        channels: Literal[1, 3] | None = None,
    ) -> None:
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        self.split = split
        self.image_size = image_size
        self.requested_channels = channels
        pixels, labels = _load_raw()
        rows = digits_split(split)
        x = torch.from_numpy(pixels[rows].astype(np.float32)).unsqueeze(1) * (255.0 / 16.0)
        if image_size != 8:  # (N, 1, 8, 8) -> (N, 1, S, S)
            align = None if interpolation == "nearest" else False
            x = F.interpolate(x, size=(image_size, image_size), mode=interpolation,
                              align_corners=align)
        images = x.round_().clamp_(0, 255).to(torch.uint8)
        self._images = images.expand(-1, channels, -1, -1).contiguous() if channels else images
        self._labels = torch.from_numpy(labels[rows])

    def __repr__(self) -> str:
        return f"Digits(split={self.split!r}, {len(self)} images, {self.image_size}px)"
