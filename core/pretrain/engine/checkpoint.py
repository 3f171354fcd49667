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
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from pretrain.errors import PretrainError

__all__ = [
    "CheckpointError",
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

_DIGEST_KEY = "pretrain.sha256"
_CHUNK = 8 << 20  # bytes per write(); small enough that a crash can land mid-file


class CheckpointError(PretrainError):
    """A checkpoint file is missing, truncated, corrupt, or does not fit the model."""


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
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    view = memoryview(data)
    try:
        with open(tmp, "wb") as fh:
            for start in range(0, len(view), _CHUNK):
                fh.write(view[start : start + _CHUNK])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


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
    header.setdefault("__metadata__", {})[_DIGEST_KEY] = hashlib.sha256(data).hexdigest()
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    atomic_write_bytes(path, b"".join([struct.pack("<Q", len(raw)), raw, data]))


def _split(path: Path, blob: bytes) -> tuple[dict[str, Any], memoryview]:
    corrupt = (
        f"checkpoint {path} is truncated or corrupt"
    )
    hint = (
        "It was probably cut short by a crash or a full disk. Use another checkpoint "
        "(e.g. best.safetensors), or start the run again without --resume."
    )
    if len(blob) < 8:
        raise CheckpointError(f"{corrupt}: only {len(blob)} bytes", hint=hint)
    (header_len,) = struct.unpack("<Q", blob[:8])
    if header_len > len(blob) - 8:
        raise CheckpointError(
            f"{corrupt}: the header claims {header_len} bytes, the file has {len(blob) - 8}",
            hint=hint,
        )
    try:
        header = json.loads(blob[8 : 8 + header_len])
    except ValueError:
        raise CheckpointError(f"{corrupt}: the header is not valid JSON", hint=hint) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{corrupt}: unexpected header", hint=hint)
    data = memoryview(blob)[8 + header_len :]
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
              default=0)
    if end != len(data):
        raise CheckpointError(
            f"{corrupt}: the tensors need {end} bytes of data, the file has {len(data)}",
            hint=hint,
        )
    digest = (header.get("__metadata__") or {}).get(_DIGEST_KEY)
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(f"{corrupt}: checksum mismatch", hint=hint)
    return header, data


def load_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file written by :func:`save_tensors` (or any safetensors file).

    Returns:
        ``(tensors on CPU, metadata)``.

    Raises:
        CheckpointError: Missing, truncated or corrupt file (checksum verified when present).

    """
    p = Path(path)
    try:
        blob = p.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {p} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {p}: {exc}") from None
    header, _ = _split(p, blob)
    try:
        tensors = st_load(blob)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {p} is corrupt: {exc}") from None
    meta = {k: v for k, v in (header.get("__metadata__") or {}).items() if k != _DIGEST_KEY}
    return tensors, meta


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return a safetensors file's metadata without loading (or verifying) its tensors."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"checkpoint {p} is truncated or corrupt")
            (n,) = struct.unpack("<Q", head)
            raw = fh.read(min(n, 100 << 20))
        header = json.loads(raw)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {p} does not exist") from None
    except ValueError:
        raise CheckpointError(f"checkpoint {p} is truncated or corrupt") from None
    return dict(header.get("__metadata__") or {})


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
