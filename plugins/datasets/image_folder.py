"""``ImageFolder``: one sub-folder per class, any image format Pillow reads; or unlabelled images.

Layout (the same as torchvision's and MMPretrain's ``CustomDataset`` with sub-folders)::

    root/cat/001.jpg
    root/cat/nested/002.png
    root/dog/003.webp

Labels follow the sorted folder names unless ``classes`` lists them (which also
selects a subset). With ``labels = false`` any directory tree of images is a
dataset (your own photos for self-supervised pretraining): every image under
``root``, at any depth, without labels. Symbolic links are followed, but real paths
are tracked: a link back into the dataset (``cat/loop -> ..``) is skipped, and a file
reached twice is counted once. Every problem is reported up front with the path at fault:
a missing ``root``, no class folders, an empty class, an unreadable image (or,
with ``skip_unreadable``, a warning that says how many were left out).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, BinaryIO, ClassVar, Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import Field
from torch import Tensor

from pretrain.components import BaseDataset, SkipSample
from pretrain.errors import PretrainError

__all__ = ["ImageFolder", "decode_image"]

#: EXIF's Orientation tag (``PIL.ExifTags.Base.Orientation``, a name Pillow 9.0-9.2 lack).
_ORIENTATION = 0x0112
_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def _image_extensions() -> frozenset[str]:
    return frozenset(ext.lower() for ext in Image.registered_extensions())


@functools.cache
def _format_of(extension: str) -> str | None:
    """Pillow's format name for a file extension (``.jpg`` -> ``JPEG``), None if unknown."""
    return Image.registered_extensions().get(extension.lower())


def _open(source: str | os.PathLike[str] | BinaryIO, extension: str | None) -> Image.Image:
    """``Image.open``, trying the extension's format first.

    Once every plugin is loaded (listing the known extensions loads them), Pillow probes
    the formats in registration order (IM, IMT, IPTC, ... before JPEG): half the cost of
    opening a JPEG. A file whose extension lies is still opened, by probing them all.
    """
    if extension is None and isinstance(source, (str, os.PathLike)):
        extension = os.path.splitext(source)[1]
    fmt = _format_of(extension) if extension else None
    if fmt is not None:
        try:
            return Image.open(source, formats=[fmt])
        except UnidentifiedImageError:
            if not isinstance(source, (str, os.PathLike)):
                source.seek(0)
    return Image.open(source)


def decode_image(
    path: str | os.PathLike[str] | BinaryIO, channels: int, size: int | None = None, *, extension: str | None = None,
) -> Tensor:
    """Decode a file as uint8 (channels, H, W); with ``size``, resize+centre-crop to size×size.

    EXIF orientation is applied; 16-bit gray is scaled to 8 bits; transparency is
    dropped (composited on black, as Pillow's ``convert`` does). ``extension``
    (``.jpg``; by default the path's) names the format to try first.
    """
    with _open(path, extension) as opened:
        # Transpose and convert only when needed: without an orientation to apply (or
        # with the mode already right) Pillow returns a copy, ~30 us per photo, on the
        # DataLoader path's every sample.
        img: Image.Image = opened
        if opened.getexif().get(_ORIENTATION, 1) != 1:
            img = ImageOps.exif_transpose(opened)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # high bit-depth gray: scale, not clip
            wide = np.asarray(img, dtype=np.float64)
            peak = 65535.0 if img.mode.startswith("I;16") else max(float(wide.max()), 1.0)
            img = Image.fromarray(np.round(wide * (255.0 / peak)).clip(0, 255).astype(np.uint8))
        mode = "L" if channels == 1 else "RGB"
        if img.mode != mode:
            img = img.convert(mode)
        if size is not None:
            img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
        # Planar (C, H, W) straight from Pillow, one band at a time into one writable
        # buffer: 1.25-1.7x faster than an (H, W, C) array transposed into a copy.
        planes = bytearray()
        for band in img.getbands():  # ("R", "G", "B") or ("L",)
            planes += img.tobytes("raw", band)
        height, width = img.height, img.width
    return torch.frombuffer(planes, dtype=torch.uint8).reshape(-1, height, width)  # (C, H, W)


def _verify(path: str) -> str | None:
    """None if Pillow can parse the file's header (and, for PNG, its checksums), else the error."""
    try:
        with Image.open(path) as img:
            img.verify()
    except _READ_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class _Walk:
    """Walks class folders following symbolic links, never entering a folder or counting a file twice.

    Real paths are tracked, so ``cat/loop -> ..`` (a cycle, which would also reach the
    dog images under the cat label) is skipped, and a file linked from two places is
    counted once.
    """

    def __init__(self, taken: set[str]) -> None:
        self.dirs = set(taken)
        self.files: set[str] = set()
        self.skipped_dirs = 0
        self.repeated_files = 0

    def images(self, folder: Path, extensions: frozenset[str]) -> Iterable[str]:
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            kept = []
            for d in dirnames:
                if d.startswith("."):
                    continue
                real = os.path.realpath(os.path.join(dirpath, d))
                if real in self.dirs:
                    self.skipped_dirs += 1
                    continue
                self.dirs.add(real)
                kept.append(d)
            dirnames[:] = kept
            for name in filenames:
                if name.startswith(".") or os.path.splitext(name)[1].lower() not in extensions:
                    continue
                path = os.path.join(dirpath, name)
                real = os.path.realpath(path)
                if real in self.files:
                    self.repeated_files += 1
                    continue
                self.files.add(real)
                yield path


class ImageFolder(BaseDataset):
    """Images in ``root/<class>/...`` (any Pillow format); the folder name is the label.

    With ``labels = false``, every image under ``root`` at any depth, unlabelled
    (self-supervised data; classifiers and kNN refuse it). Sub-folders of a class
    folder are searched too; hidden files and files whose
    extension Pillow does not know are ignored. Images are converted to RGB, or to
    gray when the model takes one channel.

    Args:
        root: Folder holding one sub-folder per class (``~`` is expanded; relative
            paths are relative to the working directory).
        classes: Class folder names in label order (default: every sub-folder,
            sorted). Listing them selects a subset and pins the label order.
        skip_unreadable: Leave out files Pillow cannot read (with a warning)
            instead of failing on the first one.
        verify: Check every file's header when the dataset is built, so a bad
            file is reported before training. Turn off for huge folders; bad files
            then fail (or are skipped) when they are loaded.
        image_size: Resize every image (shorter side, then centre crop) to
            image_size×image_size when decoding. Makes all images one size, which
            lets small datasets be held in memory and pipelines skip a Resize.
        channels: 1 or 3 channels; default: what the model takes.
        labels: Whether sub-folders are classes; false reads every image under root
            (any tree, no class folders needed) without labels.

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {"root": "data/images"}

    def __init__(
        self,
        *,
        root: str,
        classes: list[str] | None = None,
        skip_unreadable: bool = False,
        verify: bool = True,
        image_size: Annotated[int, Field(gt=0)] | None = None,
        channels: Literal[1, 3] | None = None,
        labels: bool = True,
    ) -> None:
        if not labels and classes is not None:
            raise ValueError("classes selects class folders, but labels = false reads no classes")
        self.root = Path(root).expanduser()
        self.labelled = labels
        self.skip_unreadable = skip_unreadable
        self.image_size = image_size
        self.requested_channels = channels
        self._channels = channels or 3
        self.classes, samples = self._scan(classes) if labels else self._scan_unlabelled()
        if verify:
            samples = self._check(samples)
        self.samples: list[tuple[str, int]] = samples
        self._targets = torch.tensor([label for _, label in samples], dtype=torch.long)

    # ------------------------------------------------------------------ scanning

    def _scan(self, classes: list[str] | None) -> tuple[tuple[str, ...], list[tuple[str, int]]]:
        self._check_root("a folder with one sub-folder of images per class (root/<class>/<image>), or set "
                         "labels = false for any tree of unlabelled images")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if classes is None:
            classes = found
        else:
            missing = [c for c in classes if c not in found]
            if missing:
                raise PretrainError(
                    f"ImageFolder {str(self.root)!r} has no folder for class(es) {missing}",
                    hint=f"Folders found: {found[:20]}. Fix `classes` or add the folders.",
                )
            if len(set(classes)) != len(classes):
                raise PretrainError(f"ImageFolder classes list repeats names: {classes}")
        if not classes:
            raise PretrainError(
                f"ImageFolder {str(self.root)!r} has no class sub-folders",
                hint="Put the images of each class in their own folder: root/<class>/<image>, or set "
                "labels = false to read unlabelled images (self-supervised pretraining).",
            )
        extensions = _image_extensions()
        samples: list[tuple[str, int]] = []
        # Real paths already taken: the root and every class folder (a symlink back to
        # them is a loop or another class's images), then each folder and file walked.
        walk = _Walk({os.path.realpath(self.root / d) for d in ("", *found)})
        for label, name in enumerate(classes):
            files = sorted(walk.images(self.root / name, extensions))
            if not files:
                raise PretrainError(
                    f"ImageFolder class folder {str(self.root / name)!r} holds no images",
                    hint="Add images (any format Pillow reads), remove the folder, or leave the "
                    "class out of `classes`.",
                )
            samples += [(f, label) for f in files]
        if walk.skipped_dirs or walk.repeated_files:
            warnings.warn(
                f"ImageFolder {str(self.root)!r}: symbolic links lead back into the dataset; skipped "
                f"{walk.skipped_dirs} linked folder(s) (a loop, or another class's folder) and counted "
                f"{walk.repeated_files} file(s) reached twice only once", stacklevel=3,
            )
        return tuple(classes), samples

    def _scan_unlabelled(self) -> tuple[tuple[str, ...], list[tuple[str, int]]]:
        self._check_root("a folder of images (any tree)")
        walk = _Walk({os.path.realpath(self.root)})
        files = sorted(walk.images(self.root, _image_extensions()))
        if not files:
            raise PretrainError(
                f"ImageFolder {str(self.root)!r} holds no images (labels = false reads every image under it)",
                hint="Point root at a folder with images (any format Pillow reads, at any depth).",
            )
        if walk.skipped_dirs or walk.repeated_files:
            warnings.warn(
                f"ImageFolder {str(self.root)!r}: symbolic links lead back into the dataset; skipped "
                f"{walk.skipped_dirs} linked folder(s) and counted {walk.repeated_files} file(s) reached "
                "twice only once", stacklevel=3,
            )
        return (), [(f, -1) for f in files]

    def _check_root(self, what: str) -> None:
        if not self.root.is_dir():
            state = "is a file, not a folder" if self.root.exists() else "does not exist"
            raise PretrainError(f"ImageFolder root {str(self.root)!r} {state}", hint=f"Point root at {what}.")

    @classmethod
    def spec_issues(cls, params: dict[str, Any]) -> Iterable[tuple[str, str]]:
        """``classes`` needs class folders (``labels = true``)."""
        if params.get("labels") is False and params.get("classes") is not None:
            yield "classes", "selects class folders, but labels = false reads no classes; remove one of them"

    def _check(self, samples: list[tuple[str, int]]) -> list[tuple[str, int]]:
        with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 2)) as pool:
            errors = list(pool.map(_verify, [path for path, _ in samples]))
        bad = [(path, err) for (path, _), err in zip(samples, errors, strict=True) if err]
        if not bad:
            return samples
        if not self.skip_unreadable:
            path, err = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise PretrainError(
                f"cannot read image {path!r}{more}: {err}",
                hint="Remove or fix the file, or set skip_unreadable = true to leave such files out.",
            )
        warnings.warn(
            f"ImageFolder {str(self.root)!r}: skipping {len(bad)} unreadable file(s), "
            f"e.g. {bad[0][0]!r}", stacklevel=2,
        )
        bad_paths = {path for path, _ in bad}
        kept = [s for s in samples if s[0] not in bad_paths]
        if not kept:
            raise PretrainError(f"ImageFolder {str(self.root)!r} has no readable images left",
                                hint="Fix its files.")
        for label, name in enumerate(self.classes):
            if not any(lbl == label for _, lbl in kept):
                raise PretrainError(
                    f"ImageFolder class {name!r} has no readable images left in "
                    f"{str(self.root / name)!r}", hint="Fix its files or leave the class out.",
                )
        return kept

    # ------------------------------------------------------------------ contract

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> Tensor:
        """Labels long (N,) from the folder names (no decoding); all -1 with ``labels = false``."""
        return self._targets

    @property
    def channels(self) -> int:
        """3 (RGB) unless ``channels = 1``."""
        return self._channels

    def load_image(self, index: int) -> Tensor:
        """Decode image ``index`` as uint8 (C, H, W).

        Raises:
            PretrainError: The file cannot be read (``SkipSample`` with ``skip_unreadable``).

        """
        path = self.samples[index][0]
        try:
            return decode_image(path, self._channels, self.image_size)
        except _READ_ERRORS as exc:
            if self.skip_unreadable:
                raise SkipSample(path) from exc
            raise PretrainError(
                f"cannot read image {path!r}: {type(exc).__name__}: {exc}",
                hint="Remove or fix the file, or set skip_unreadable = true.",
            ) from exc

    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, image_size, image_size) when ``image_size`` is set, else None (sizes vary)."""
        if self.image_size is None:
            return None
        return (self._channels, self.image_size, self.image_size)

    def load_all(self) -> tuple[Tensor, Tensor]:
        """Decode every image (in threads) into uint8 (N, C, S, S); needs ``image_size``."""
        if self.image_size is None:
            raise PretrainError(
                "ImageFolder.load_all needs image_size (the images may differ in size)",
                hint="Set image_size, or let the engine use a DataLoader (in_memory = false).",
            )

        def load(i: int) -> Tensor | None:
            try:
                return self.load_image(i)
            except SkipSample:
                return None

        with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 2)) as pool:
            images = list(pool.map(load, range(len(self))))
        keep = [i for i, img in enumerate(images) if img is not None]
        if len(keep) < len(images):
            warnings.warn(f"ImageFolder {str(self.root)!r}: skipped {len(images) - len(keep)} "
                          "file(s) that failed to decode", stacklevel=2)
        if not keep:
            return torch.empty(0, self._channels, self.image_size, self.image_size,
                               dtype=torch.uint8), self._targets[:0]
        stacked = torch.stack([images[i] for i in keep])  # type: ignore[misc]
        return stacked, self._targets[torch.tensor(keep, dtype=torch.long)]

    def __repr__(self) -> str:
        labels = f"{len(self.classes)} classes" if self.labelled else "unlabelled"
        return f"ImageFolder(root={str(self.root)!r}, {len(self)} images, {labels})"
