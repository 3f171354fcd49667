"""Reading weights files safely: safetensors with pretrain's checksum, and checks on what they hold.

The one reader behind ``Pretrained`` init rules, ``pretrain eval --weights``,
``--resume`` and ``pretrain reconstruct``, so every path verifies the same things:

- the path is a regular file (a directory or ``/dev/zero`` is refused before reading);
- the file is a well-formed safetensors file (a PyTorch pickle or zip checkpoint, an
  empty file or random bytes are named as such, never "cut short by a crash");
- the tensor data matches the SHA-256 that :func:`pretrain.engine.checkpoint.save_tensors`
  stores under ``pretrain.sha256`` in the header metadata (files written elsewhere
  have none and are read as they are);
- :func:`check_tensors`: no integer or boolean tensor where the model has a floating
  point one (torch would cast it silently), and no NaN or infinity.

Writing lives in :mod:`pretrain.engine.checkpoint`; the format facts both need are here.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pretrain.errors import PretrainError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "DIGEST_KEY",
    "CheckpointError",
    "check_tensors",
    "looks_like_torch_save",
    "read_header",
    "read_safetensors",
    "split_safetensors",
]

#: Metadata key of the SHA-256 (hex) of a file's tensor data.
DIGEST_KEY = "pretrain.sha256"
#: Largest header accepted (safetensors itself caps it at 100 MB).
MAX_HEADER_BYTES = 100 * 1024 * 1024

_DAMAGED_HINT = (
    "The file changed after it was written: cut short by a crash or a full disk, or damaged on "
    "disk or in a copy. Use another copy of it (a run also keeps checkpoints/best.safetensors and "
    "last.safetensors)."
)
_PICKLE_HINT = (
    "pretrain reads weights as .safetensors. Convert it with `pretrain convert-weights`, or load "
    "it into a model with a Pretrained init rule (which reads tensors-only .pth files)."
)


class CheckpointError(PretrainError):
    """A weights or checkpoint file is missing, not safetensors, damaged, or does not fit the model."""


def _regular_file(path: Path) -> int:
    """The size of ``path``, which must be a regular file."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist",
                              hint="Check the path (relative paths start at the current directory).") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise CheckpointError(f"{path} is a directory, not a weights file",
                              hint="Name the .safetensors file (a run directory's is checkpoints/best.safetensors).")
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path} is not a regular file (a device, pipe or socket), so it holds no weights",
                              hint="Pass a .safetensors file.")
    return info.st_size


def _foreign_format(blob: bytes) -> str | None:
    """What a file that is not safetensors looks like, from its first bytes."""
    if blob.startswith(b"PK\x03\x04"):
        return "a PyTorch checkpoint (torch.save zip archive)"
    if blob[:1] == b"\x80" and blob[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickled PyTorch checkpoint"
    if blob[:2] == b"\x1f\x8b":
        return "a gzip archive"
    return None


def looks_like_torch_save(path: str | os.PathLike[str]) -> bool:
    """Whether a file starts like ``torch.save`` output (a zip archive or a pickle)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def split_safetensors(path: Path, blob: bytes) -> tuple[dict[str, Any], memoryview]:
    """Check a safetensors file's layout and checksum; return ``(header, tensor data)``.

    Raises:
        CheckpointError: Not safetensors, a malformed header, truncated or padded data,
            or a checksum mismatch (each named as such).

    """
    foreign = _foreign_format(blob)
    if foreign is not None:
        raise CheckpointError(f"{path} is {foreign}, not a safetensors file", hint=_PICKLE_HINT)
    corrupt = f"checkpoint {path} is truncated or corrupt"
    if not blob:
        raise CheckpointError(f"{corrupt}: it is empty (0 bytes)", hint=_DAMAGED_HINT)
    if len(blob) < 8:
        raise CheckpointError(f"{corrupt}: only {len(blob)} bytes", hint=_DAMAGED_HINT)
    (header_len,) = struct.unpack("<Q", blob[:8])
    if header_len > MAX_HEADER_BYTES or (len(blob) > 8 and blob[8:9] != b"{"):
        raise CheckpointError(
            f"{path} is not a safetensors file (its first bytes are not a safetensors header)",
            hint="Pass a .safetensors file written by `pretrain train`, `pretrain convert-weights` "
            "or safetensors.torch.save_file.",
        )
    if header_len > len(blob) - 8:
        raise CheckpointError(
            f"{corrupt}: the header claims {header_len} bytes, the file has {len(blob) - 8}",
            hint=_DAMAGED_HINT,
        )
    try:
        header = json.loads(blob[8 : 8 + header_len])
    except ValueError:
        raise CheckpointError(f"{corrupt}: the header is not valid JSON", hint=_DAMAGED_HINT) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{corrupt}: the header is not a JSON object", hint=_DAMAGED_HINT)
    data = memoryview(blob)[8 + header_len :]
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            if entry is not None and not (isinstance(entry, dict) and all(
                    isinstance(v, str) for v in entry.values())):
                raise CheckpointError(f"{corrupt}: its __metadata__ is not a table of strings", hint=_DAMAGED_HINT)
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{corrupt}: the header entry of tensor {key!r} is malformed "
                                  "(no valid data_offsets)", hint=_DAMAGED_HINT)
        end = max(end, offsets[1])
    if end > len(data):
        raise CheckpointError(f"{corrupt}: the tensors need {end} bytes of data, the file has {len(data)}",
                              hint=_DAMAGED_HINT)
    if end < len(data):
        raise CheckpointError(f"{corrupt}: {len(data) - end} bytes follow the last tensor", hint=_DAMAGED_HINT)
    digest = (header.get("__metadata__") or {}).get(DIGEST_KEY)
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(
            f"{corrupt}: checksum mismatch (the tensor data is not what pretrain wrote)", hint=_DAMAGED_HINT
        )
    return header, data


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read and verify a safetensors file (see :func:`split_safetensors`).

    Returns:
        ``(tensors on CPU, metadata)``; the checksum entry is left out of the metadata.

    Raises:
        CheckpointError: Missing, not a regular file, unreadable, not safetensors, or damaged.

    """
    from safetensors.torch import load as st_load

    p = Path(path)
    _regular_file(p)
    try:
        blob = p.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {p}: {exc.strerror or exc}") from None
    header, _ = split_safetensors(p, blob)
    try:
        tensors = st_load(blob)
    except Exception as exc:  # safetensors' own checks (dtype names, shapes vs offsets)
        raise CheckpointError(f"checkpoint {p} is truncated or corrupt: {exc}", hint=_DAMAGED_HINT) from None
    meta = {k: v for k, v in (header.get("__metadata__") or {}).items() if k != DIGEST_KEY}
    return tensors, meta


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A safetensors file's header (tensor entries and ``__metadata__``) without reading its data.

    Raises:
        CheckpointError: Missing, not a regular file, or not a safetensors header.

    """
    p = Path(path)
    size = _regular_file(p)
    try:
        with open(p, "rb") as fh:
            head = fh.read(9)
            if len(head) < 9:
                raise CheckpointError(f"checkpoint {p} is truncated or corrupt: only {len(head)} bytes",
                                      hint=_DAMAGED_HINT)
            foreign = _foreign_format(head)
            if foreign is not None:
                raise CheckpointError(f"{p} is {foreign}, not a safetensors file", hint=_PICKLE_HINT)
            (n,) = struct.unpack("<Q", head[:8])
            if n < 2 or n > MAX_HEADER_BYTES or head[8:9] != b"{" or n > size - 8:
                raise CheckpointError(f"checkpoint {p} is truncated or corrupt, or not a safetensors file",
                                      hint=_DAMAGED_HINT)
            raw = head[8:] + fh.read(n - 1)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {p}: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw)
    except ValueError:
        raise CheckpointError(f"checkpoint {p} is truncated or corrupt: the header is not valid JSON",
                              hint=_DAMAGED_HINT) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint {p} is truncated or corrupt: the header is not a JSON object",
                              hint=_DAMAGED_HINT)
    return header


def check_tensors(state: Mapping[str, Tensor], reference: Mapping[str, Tensor], source: str) -> None:
    """Refuse weights that torch would load silently but wrongly.

    Args:
        state: The tensors about to be loaded (keys as the model names them).
        reference: The model's own state dict (for dtypes); keys it lacks are skipped.
        source: What is being loaded, for the message (``'w.safetensors'``, ``model.backbone.init[0]: ...``).

    Raises:
        CheckpointError: The first tensor (in ``state`` order) that is an integer or
            boolean tensor where the model's is floating point, or that holds NaN or inf.

    """
    import torch

    for key, value in state.items():
        own = reference.get(key)
        if own is not None and (own.is_floating_point() or own.is_complex()) and not (
                value.is_floating_point() or value.is_complex()):
            raise CheckpointError(
                f"{source}: tensor {key!r} is {str(value.dtype).removeprefix('torch.')} but the model's "
                f"{key} is {str(own.dtype).removeprefix('torch.')}; integer and boolean tensors are not "
                "weights (torch would cast them silently)",
                hint="The file is probably quantised or not a weights file for this model; use float weights.",
            )
        if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"{source}: tensor {key!r} holds {bad} NaN or infinite value(s) of {value.numel()}; "
                "such weights only produce NaN outputs",
                hint="The weights come from a run that diverged or a damaged conversion; use an earlier "
                "checkpoint.",
            )
