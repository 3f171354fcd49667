"""Checkpoints without pickle: safetensors files with a JSON header, written atomically.

A run directory's ``checkpoints/`` holds:

- ``last.safetensors`` / ``best.safetensors``: model weights only (the EMA weights
  when the run evaluates an EMA), loadable with ``safetensors.torch.load_file``
  and by ``pretrain eval --weights``; the header metadata says epoch, step, metrics.
- ``last.state.safetensors``: everything ``--resume`` needs in ONE file, so it is
  replaced atomically as a unit: raw model weights (``model.*``), EMA weights
  (``ema.*``), optimizer tensors (``optim.<param>.<name>``), RNG states of every rank
  (``rng.<rank>.<generator>``), and a JSON document (counters, optimizer groups,
  GradScaler state, metric history) in the safetensors metadata.
- ``last.json``: a human-readable copy of that JSON (informational only).

Every file is written to a temporary name in the same folder, flushed, fsync'ed and
renamed over the old one (``os.replace`` is atomic on POSIX and Windows), so a
crash at any moment leaves either the old or the new file, never a torn one.
Each file also carries a SHA-256 of its tensor data, so a corrupt or truncated file
is reported as such instead of loading garbage.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import struct
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as st_save

from pretrain.assembly.weights_file import DIGEST_KEY, CheckpointError, read_header, read_safetensors
from pretrain.errors import PretrainError

__all__ = [
    "CheckpointError",
    "WriteError",
    "atomic_write_bytes",
    "capture_rng",
    "flatten_optimizer",
    "load_tensors",
    "parse_state_doc",
    "pid_alive",
    "read_metadata",
    "read_metadata_json",
    "remove_stale_temp_files",
    "restore_rng",
    "save_tensors",
    "unflatten_optimizer",
]

_CHUNK = 8 << 20  # bytes per write(); small enough that a crash can land mid-file


# --------------------------------------------------------------------------- atomic files


def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable; not possible (nor needed) on Windows.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a mix.

    The bytes go to ``.<name>.tmp-<pid>-<random>`` in the same folder, are fsync'ed,
    then renamed over ``path``. On any error the temporary file is removed and
    ``path`` is untouched.

    Raises:
        WriteError: The file cannot be written (disk full, permissions, ...); the
            message names it.

    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    view = memoryview(data)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            for start in range(0, len(view), _CHUNK):
                fh.write(view[start : start + _CHUNK])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise WriteError.from_os_error(target, exc) from exc
        raise
    _fsync_dir(target.parent)


class WriteError(PretrainError):
    """A file of the run could not be written; the previous version of it is intact."""

    @classmethod
    def from_os_error(cls, path: Path, exc: OSError) -> WriteError:
        """The message for ``exc`` raised while writing ``path``."""
        why = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = (f"Free space on the disk that holds {path.parent} (or use another --run-dir). "
                    "Nothing already written was lost: the previous version of the file is intact, "
                    "and a run can continue with --resume.")
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = f"Make {path.parent} writable, or write somewhere else (e.g. another --run-dir)."
        else:
            hint = "Nothing already written was lost: the previous version of the file is intact."
        return cls(f"cannot write {path}: {why}", hint=hint)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete temporary files left by a process killed mid-write; return them.

    A temporary file names its writer (``.<name>.tmp-<pid>-<random>``); one whose
    writer is still alive on this machine is another process's write in progress
    and is left alone.
    """
    removed: list[Path] = []
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp-*"):
            pid = tmp.name.rpartition(".tmp-")[2].partition("-")[0]
            if pid.isdigit() and pid_alive(int(pid)):
                continue
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# --------------------------------------------------------------------------- safetensors I/O


def _cpu_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (tied weights): copy those.
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in tensors.items():
        t = value.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen:
            t = t.clone()
        elif ptr != -1:
            seen.add(ptr)
        out[key] = t
    return out


def save_tensors(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> None:
    """Save tensors + string metadata as safetensors (atomically, with a data checksum)."""
    blob = st_save(_cpu_tensors(tensors), metadata=dict(metadata))
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    data = memoryview(blob)[8 + header_len :]
    header.setdefault("__metadata__", {})[DIGEST_KEY] = hashlib.sha256(data).hexdigest()
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    atomic_write_bytes(path, b"".join([struct.pack("<Q", len(raw)), raw, data]))


def load_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file written by :func:`save_tensors` (or any safetensors file).

    Returns:
        ``(tensors on CPU, metadata)``.

    Raises:
        CheckpointError: Missing, not a regular file, not safetensors, truncated or
            corrupt (checksum verified when present); see :mod:`pretrain.assembly.weights_file`.

    """
    return read_safetensors(path)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return a safetensors file's metadata without loading (or verifying) its tensors."""
    meta = read_header(path).get("__metadata__") or {}
    return dict(meta) if isinstance(meta, dict) else {}


def read_metadata_json(path: str | os.PathLike[str], key: str = "pretrain.state") -> dict[str, Any]:
    """Parse the JSON document stored under ``key`` in a safetensors file's metadata."""
    return parse_state_doc(path, read_metadata(path), key)


def parse_state_doc(
    path: str | os.PathLike[str], meta: Mapping[str, str], key: str = "pretrain.state"
) -> dict[str, Any]:
    """The JSON document under ``key`` in already-read metadata (a training state's counters).

    Raises:
        CheckpointError: The file is not a pretrain training state.

    """
    try:
        doc = json.loads(meta[key])
        if not isinstance(doc, dict) or "state" not in doc:
            raise ValueError(key)
    except (KeyError, ValueError, TypeError):
        raise CheckpointError(
            f"{path} is not a pretrain training state (no valid {key!r} metadata)",
            hint="--resume reads checkpoints/last.state.safetensors written by `pretrain train`; "
            "weights files (last/best.safetensors) cannot be resumed from.",
        ) from None
    return dict(doc)


# --------------------------------------------------------------------------- RNG states


def capture_rng() -> dict[str, torch.Tensor]:
    """Every RNG this process may draw from, as tensors (no pickle needed)."""
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        out["cuda"] = torch.cuda.get_rng_state()
    _, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    out["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    out["numpy_extra"] = torch.tensor([float(pos), float(has_gauss), float(gauss)], dtype=torch.float64)
    version, internal, gauss_next = random.getstate()
    out["python"] = torch.tensor(internal, dtype=torch.int64)
    out["python_extra"] = torch.tensor(
        [float(version), float(gauss_next is not None), gauss_next or 0.0], dtype=torch.float64
    )
    return out


def restore_rng(state: Mapping[str, torch.Tensor]) -> None:
    """Inverse of :func:`capture_rng` (generators missing from ``state`` are left alone)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8).cpu())
    if "numpy" in state:
        pos, has_gauss, gauss = state["numpy_extra"].tolist()
        keys = state["numpy"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, int(pos), int(has_gauss), gauss))
    if "python" in state:
        version, has_gauss, gauss_next = state["python_extra"].tolist()
        internal = tuple(int(v) for v in state["python"].tolist())
        random.setstate((int(version), internal, gauss_next if has_gauss else None))


# --------------------------------------------------------------------------- optimizer state


def flatten_optimizer(sd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and a JSON-able document."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, per_param in sd["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    groups = [_jsonable(dict(g)) for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(
    tensors: Mapping[str, torch.Tensor], doc: Mapping[str, Any], current: Mapping[str, Any]
) -> dict[str, Any]:
    """Rebuild a state dict for ``optimizer.load_state_dict``.

    ``current`` is the live optimizer's ``state_dict()``; it restores tuple-valued
    hyper-parameters (``betas``) that JSON turned into lists.
    """
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in doc["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = []
    for saved, live in zip(doc["param_groups"], current["param_groups"], strict=False):
        group = dict(saved)
        for name, value in live.items():
            if isinstance(value, tuple) and isinstance(group.get(name), list):
                group[name] = tuple(group[name])
        groups.append(group)
    if len(doc["param_groups"]) != len(current["param_groups"]):
        raise CheckpointError(
            f"the checkpoint's optimizer has {len(doc['param_groups'])} parameter groups, "
            f"this run's has {len(current['param_groups'])}",
            hint="The model or train.paramwise changed since the checkpoint was written; "
            "resume with the original spec.",
        )
    return {"state": state, "param_groups": groups}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def dumps(doc: Any) -> str:
    """JSON for checkpoint metadata (floats round-trip exactly through ``repr``)."""
    return json.dumps(_jsonable(doc), sort_keys=True)
