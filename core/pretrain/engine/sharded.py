"""Sharded safetensors checkpoints: one file per rank plus a JSON index (FSDP runs).

Under ``train.strategy = "fsdp"`` no rank ever holds the whole model, so every rank
writes its own piece of a checkpoint::

    checkpoints/last-00000-of-00002.safetensors   rank 0's local shards (+ replicated buffers)
    checkpoints/last-00001-of-00002.safetensors   rank 1's
    checkpoints/last.index.json                   written last, by rank 0: the files, the step

Each file is an ordinary checksummed safetensors file (:mod:`pretrain.engine.checkpoint`)
whose metadata (``pretrain.shard``) records, per tensor, its global shape and the
dimension it is split along (FSDP2 splits dimension 0 into ``torch.chunk`` pieces;
``null`` = replicated, e.g. BatchNorm statistics). :func:`load_sharded` concatenates
the pieces back into whole tensors, so a sharded checkpoint loads anywhere a single
file does: ``pretrain eval``, ``pretrain predict``/``export``, a single-process or DDP
``--resume``, and an FSDP run with another number of processes.

The index is written after every rank's file, and every file carries the step it
was written at, so a run killed between the writes is reported as an inconsistent
checkpoint, never loaded half old, half new.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from pretrain.assembly.shards import INDEX_FORMAT, SHARD_KEY, merge_shards
from pretrain.engine import checkpoint as ckpt

__all__ = ["INDEX_FORMAT", "is_sharded", "load_sharded", "load_weights_file", "local_parts", "write_index",
           "write_shard"]



def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` names a sharded checkpoint's index (``*.index.json``)."""
    return str(path).endswith(".index.json")


def local_parts(tensors: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, dict[str, Any]]]:
    """Split DTensors into this rank's local pieces and their layout (plain tensors are replicated).

    Returns:
        ``(local tensors, layout)`` where layout maps each key to
        ``{"dim": split dimension or None, "shape": global shape}``.

    """
    from torch.distributed.tensor import DTensor, Shard

    local: dict[str, Tensor] = {}
    layout: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        if isinstance(value, DTensor):
            dims = [p.dim for p in value.placements if isinstance(p, Shard)]
            if len(dims) > 1:
                raise ckpt.CheckpointError(f"{key} is sharded on several mesh dimensions, which sharded "
                                           "checkpoints do not support", hint="Use a 1-D device mesh.")
            local[key] = value.to_local()
            layout[key] = {"dim": dims[0] if dims else None, "shape": list(value.shape)}
        else:
            local[key] = value
            layout[key] = {"dim": None, "shape": list(value.shape)}
    return local, layout


def write_shard(
    path: Path, tensors: Mapping[str, Any], metadata: Mapping[str, str], *, rank: int, world_size: int,
    step: int,
) -> None:
    """Write this rank's file of a sharded checkpoint (every rank calls it)."""
    local, layout = local_parts(tensors)
    doc = {"rank": rank, "world_size": world_size, "step": step, "layout": layout}
    ckpt.save_tensors(path, local, {**metadata, SHARD_KEY: ckpt.dumps(doc)})


def write_index(path: Path, files: Sequence[Path], *, step: int, metadata: Mapping[str, str]) -> None:
    """Write the index that makes a set of shard files one checkpoint (rank 0, after every shard)."""
    doc = {"format": INDEX_FORMAT, "world_size": len(files), "step": step,
           "files": [f.name for f in files], "metadata": dict(metadata)}
    ckpt.atomic_write_bytes(path, (json.dumps(doc, indent=1) + "\n").encode("utf-8"))


def read_index(path: Path) -> dict[str, Any]:
    """Parse and check a sharded checkpoint's index.

    Raises:
        CheckpointError: Missing, unparsable, or not a pretrain index.

    """
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT or not doc.get("files"):
            raise ValueError("not a pretrain.sharded/1 index")
    except FileNotFoundError:
        raise ckpt.CheckpointError(f"checkpoint index {path} does not exist") from None
    except ValueError as exc:
        raise ckpt.CheckpointError(f"{path} is not a sharded checkpoint index ({exc})",
                                   hint="Pass the *.index.json that `pretrain train` wrote.") from None
    return doc


def load_sharded(
    path: str | Path, *, extra_per_rank: str | None = None,
) -> tuple[dict[str, Tensor], dict[str, str], list[dict[str, Tensor]]]:
    """Read every shard of the checkpoint indexed by ``path`` and rebuild whole tensors.

    Args:
        path: The ``*.index.json``.
        extra_per_rank: A key prefix (e.g. ``"rng."``) whose tensors are per-rank state, not
            shards: they are returned per rank instead of being merged.

    Returns:
        ``(whole tensors, metadata of rank 0's file, per-rank tensors under extra_per_rank)``.

    Raises:
        CheckpointError: A missing, damaged or inconsistent shard.

    """
    index_path = Path(path)
    index = read_index(index_path)
    parts: list[dict[str, Tensor]] = []
    docs: list[dict[str, Any]] = []
    metas: list[dict[str, str]] = []
    for name in index["files"]:
        tensors, meta = ckpt.load_tensors(index_path.parent / name)
        try:
            doc = json.loads(meta.pop(SHARD_KEY))
        except (KeyError, ValueError):
            raise ckpt.CheckpointError(f"{index_path.parent / name} is not a shard of a sharded checkpoint") from None
        if doc["step"] != index["step"]:
            raise ckpt.CheckpointError(
                f"the sharded checkpoint {index_path} is inconsistent: {name} was written at step "
                f"{doc['step']}, the index at step {index['step']} (a run killed while saving)",
                hint="Use the other checkpoint (best/last), or start the run again.",
            )
        parts.append(tensors)
        docs.append(doc)
        metas.append(meta)
    whole = merge_shards(parts, docs[0]["layout"], skip_prefix=extra_per_rank, where=str(index_path))
    per_rank: list[dict[str, Tensor]] = [{} for _ in parts]
    if extra_per_rank is not None:
        for rank, tensors in enumerate(parts):
            per_rank[rank] = {k: v for k, v in tensors.items() if k.startswith(extra_per_rank)}
    return whole, metas[0], per_rank


def load_weights_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Whole tensors and metadata of a weights file: one ``.safetensors``, or a sharded ``*.index.json``."""
    if is_sharded(path):
        tensors, meta, _ = load_sharded(path)
        return tensors, meta
    return ckpt.load_tensors(path)
