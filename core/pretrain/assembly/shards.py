"""Whole tensors from the per-rank files of a sharded checkpoint (FSDP runs).

The file format is :mod:`pretrain.engine.sharded`'s (which writes it and verifies its
checksums); this module only merges, so that the ``Pretrained`` init rule can start
a new model from a sharded checkpoint too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pretrain.errors import PretrainError

__all__ = ["INDEX_FORMAT", "SHARD_KEY", "merge_shards", "read_sharded_index"]

#: ``format`` of a sharded checkpoint's ``*.index.json``.
INDEX_FORMAT = "pretrain.sharded/1"
#: Metadata key of each shard file: rank, world size, step and the layout of every tensor.
SHARD_KEY = "pretrain.shard"


def merge_shards(parts: Sequence[Mapping[str, Tensor]], layout: Mapping[str, Mapping[str, Any]],
                 *, skip_prefix: str | None = None, where: str = "") -> dict[str, Tensor]:
    """Concatenate each tensor's per-rank pieces along its split dimension (replicated: rank 0's).

    Args:
        parts: Every rank's tensors, in rank order.
        layout: ``key -> {"dim": split dimension or None, "shape": global shape}``.
        skip_prefix: Keys with this prefix are left out (per-rank state such as RNGs).
        where: The checkpoint, for error messages.

    Raises:
        PretrainError: The pieces do not make the recorded shape.

    """
    whole: dict[str, Tensor] = {}
    for key, spec in layout.items():
        if skip_prefix is not None and key.startswith(skip_prefix):
            continue
        dim = spec["dim"]
        if dim is None:
            whole[key] = parts[0][key]
            continue
        pieces = [p[key] for p in parts if key in p and p[key].numel() > 0]
        merged = torch.cat(pieces, dim=dim) if pieces else parts[0][key]
        if list(merged.shape) != list(spec["shape"]):
            raise PretrainError(f"{where}: the shards of {key} make shape {list(merged.shape)}, "
                                f"the checkpoint says {list(spec['shape'])}",
                                hint="The shard files come from different runs; use a complete checkpoint.")
        whole[key] = merged
    return whole


def read_sharded_index(path: str | Path) -> dict[str, Tensor]:
    """Whole tensors of the sharded checkpoint indexed by ``path`` (no checksum verification).

    Raises:
        PretrainError: An unreadable index or shard, or shards of different steps.

    """
    from safetensors import safe_open

    index_path = Path(path)
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if index.get("format") != INDEX_FORMAT:
            raise ValueError(f"format {index.get('format')!r}")
        parts, layout = [], None
        for name in index["files"]:
            with safe_open(str(index_path.parent / name), framework="pt") as fh:
                doc = json.loads(fh.metadata()[SHARD_KEY])
                if doc["step"] != index["step"]:
                    raise ValueError(f"{name} was written at step {doc['step']}, the index at {index['step']}")
                parts.append({k: fh.get_tensor(k) for k in fh.keys()})  # noqa: SIM118 - safe_open has no iterator
                layout = layout or doc["layout"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PretrainError(
            f"cannot read the sharded checkpoint {index_path}: {exc}",
            hint="Pass the *.index.json a `pretrain train` FSDP run wrote, with its shard files.",
        ) from None
    assert layout is not None
    return merge_shards(parts, layout, skip_prefix="rng.", where=str(index_path))
