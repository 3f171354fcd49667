"""CIFAR-10 / CIFAR-100 from a local copy of the official "python version" files.

The official files are Python 2 pickles of dicts holding NumPy arrays, so reading
them needs ``pickle``. They are read with a restricted unpickler that resolves
only the globals NumPy array reconstruction needs (``_reconstruct``, ``ndarray``,
``dtype``, plus ``_frombuffer`` and ``_codecs.encode`` for files re-saved by
Python 3); any other global (``os.system``, ``builtins.eval``, ...) is refused,
so a tampered file cannot run code. The loaded arrays are then checked
for the documented shapes and types.

Nothing is downloaded unless the spec says ``download = true`` (then torchvision's
downloader fetches and checksums the official archive).
"""

from __future__ import annotations

import codecs
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from pretrain.errors import PretrainError
from pretrain_builtins.datasets._in_memory import InMemoryDataset

__all__ = ["CIFAR10", "CIFAR100", "load_numpy_pickle"]


def _allowed_globals() -> dict[tuple[str, str], Callable[..., Any] | type]:
    """The globals an array pickle may name, under both NumPy 1 and NumPy 2 module paths."""
    try:  # NumPy >= 2 moved numpy.core to numpy._core
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
        from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Callable[..., Any] | type] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes ``bytes`` as _codecs.encode(str, "latin1") in protocols <= 2;
        # encoding text cannot run code.
        ("_codecs", "encode"): codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _reconstruct  # protocols <= 4
        allowed[(f"{core}.numeric", "_frombuffer")] = _frombuffer  # protocol 5
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only NumPy's array/dtype reconstruction globals; everything else is refused."""

    allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only NumPy arrays are allowed in "
                "CIFAR files"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed in CIFAR files")


def load_numpy_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` allowing only NumPy array reconstruction (Python 2 files too).

    Raises:
        PretrainError: The file holds anything else, or is not a pickle.

    """
    data = Path(path).read_bytes()
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise PretrainError(
            f"{str(path)!r} is not a valid CIFAR python-format file: {exc}",
            hint="Replace it with the file from the official archive.",
        ) from exc


class _CIFAR(InMemoryDataset):
    """Shared reader of the CIFAR python-format batches."""

    name: ClassVar[str]
    folder: ClassVar[str]
    archive_url: ClassVar[str]
    archive_md5: ClassVar[str]
    files: ClassVar[dict[str, tuple[str, ...]]]
    meta_file: ClassVar[str]

    def __init__(self, *, root: str, split: Literal["train", "test"], download: bool,
                 channels: Literal[1, 3] | None, label_key: str, names_key: str) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        self.requested_channels = channels
        folder = self._locate()
        if folder is None and download:
            self._download()
            folder = self._locate()
        if folder is None:
            # Name the files that are missing from the most complete candidate folder.
            needed = (*self.files[split], self.meta_file)
            best = max((self.root / self.folder, self.root),
                       key=lambda f: sum((f / n).is_file() for n in needed))
            missing = [str(best / n) for n in needed if not (best / n).is_file()]
            shown = ", ".join(repr(m) for m in missing[:3])
            if len(missing) > 3:
                shown += f" (+{len(missing) - 3} more)"
            raise PretrainError(
                f"{self.name} not found in {str(self.root)!r}: missing {shown} "
                f"(the official python-version files)",
                hint=f"Download {self.archive_url} and extract it into {str(self.root)!r} "
                f"(it creates {self.folder}/), or set download = true in the spec.",
            )
        images, labels = [], []
        for fname in self.files[split]:
            entry = self._read(folder / fname)
            data, raw_labels = entry.get("data"), entry.get(label_key)
            if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                    and data.shape[1] == 3072 and raw_labels is not None
                    and len(raw_labels) == len(data)):
                raise PretrainError(
                    f"{str(folder / fname)!r} does not hold {self.name} batches "
                    f"('data' uint8 (N, 3072) and {label_key!r} of length N)",
                    hint="Replace it with the file from the official archive.",
                )
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(np.asarray(raw_labels, dtype=np.int64))
        meta = self._read(folder / self.meta_file)
        self.classes = tuple(str(n) for n in meta.get(names_key, ()))
        self._images = torch.from_numpy(np.concatenate(images))  # (N, 3, 32, 32) uint8
        self._labels = torch.from_numpy(np.concatenate(labels))
        if channels == 1:
            from pretrain.components import to_channels

            self._images = to_channels(self._images, 1)

    def _locate(self) -> Path | None:
        for folder in (self.root / self.folder, self.root):
            if all((folder / f).is_file() for f in (*self.files[self.split], self.meta_file)):
                return folder
        return None

    def _download(self) -> None:
        from torchvision.datasets.utils import download_and_extract_archive

        self.root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(self.archive_url, str(self.root), md5=self.archive_md5)

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        entry = load_numpy_pickle(path)
        if not isinstance(entry, dict):
            raise PretrainError(f"{str(path)!r} does not hold a dict, so it is not a CIFAR file")
        return entry

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, {len(self)} images)"


class CIFAR10(_CIFAR):
    """CIFAR-10 (60,000 32×32 colour images, 10 classes) from the official python-version files.

    Args:
        root: Folder that holds ``cifar-10-batches-py/`` (or that folder itself).
        split: ``train`` (50,000 images) or ``test`` (10,000).
        download: Download and extract the official archive into ``root`` if missing.
        channels: 1 or 3 channels; default: what the model takes.

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {"root": "data/cifar10"}

    name = "CIFAR-10"
    folder = "cifar-10-batches-py"
    archive_url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    archive_md5 = "c58f30108f718f92721af3b95e74349a"
    files: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
    }
    meta_file = "batches.meta"

    def __init__(self, *, root: str, split: Literal["train", "test"] = "train",
                 download: bool = False, channels: Literal[1, 3] | None = None) -> None:
        super().__init__(root=root, split=split, download=download, channels=channels,
                         label_key="labels", names_key="label_names")


class CIFAR100(_CIFAR):
    """CIFAR-100 (60,000 32×32 colour images, 100 classes or 20 superclasses), official files.

    Args:
        root: Folder that holds ``cifar-100-python/`` (or that folder itself).
        split: ``train`` (50,000 images) or ``test`` (10,000).
        label_type: ``fine`` (100 classes) or ``coarse`` (20 superclasses).
        download: Download and extract the official archive into ``root`` if missing.
        channels: 1 or 3 channels; default: what the model takes.

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {"root": "data/cifar100"}

    name = "CIFAR-100"
    folder = "cifar-100-python"
    archive_url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    archive_md5 = "eb9058c3a382ffc7106e4002c42a8d85"
    files: ClassVar[dict[str, tuple[str, ...]]] = {"train": ("train",), "test": ("test",)}
    meta_file = "meta"

    def __init__(self, *, root: str, split: Literal["train", "test"] = "train",
                 label_type: Literal["fine", "coarse"] = "fine", download: bool = False,
                 channels: Literal[1, 3] | None = None) -> None:
        self.label_type = label_type
        super().__init__(root=root, split=split, download=download, channels=channels,
                         label_key=f"{label_type}_labels", names_key=f"{label_type}_label_names")
