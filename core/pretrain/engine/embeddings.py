"""Features of a model on a split: encoding, gathering across ranks, and the embeddings file.

The embeddings file (``pretrain embed``, and a saved retrieval gallery) is a
checksummed safetensors file::

    features   float32 (M, D)   one row per image, in dataset order
    labels     int64 (M,)       class labels (absent for unlabelled images)
    metadata   format = "pretrain.embeddings/1", classes (JSON list), split, model, weights

``[data.gallery] embeddings = "file"`` reads it back as a gallery.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pretrain.engine import checkpoint as ckpt
from pretrain.engine.distributed import DistInfo
from pretrain.engine.metrics import gather_rows
from pretrain.errors import PretrainError

__all__ = [
    "EMBEDDINGS_FORMAT",
    "Embeddings",
    "embed_batches",
    "features_of",
    "gather_in_order",
    "load_embeddings",
    "save_embeddings",
]

EMBEDDINGS_FORMAT = "pretrain.embeddings/1"


@dataclass
class Embeddings:
    """Features of a split, in dataset order.

    Attributes:
        feats: float32 (M, D).
        labels: int64 (M,) class labels, -1 where there is none.
        classes: Class names (empty for unlabelled data).
        meta: The file's other metadata (split, model, weights).

    """

    feats: Tensor
    labels: Tensor
    classes: tuple[str, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)


def features_of(model: nn.Module, images: Any) -> Tensor:
    """(N, D) features of a raw image batch: ``model.extract_feat``, reduced to one vector per image.

    A tuple of stages keeps the last; a (N, C, H, W) map is averaged over space and a
    (N, L, C) token sequence over tokens.

    Raises:
        PretrainError: The model has no ``extract_feat``, or its output is not a feature tensor.

    """
    extract = getattr(model, "extract_feat", None)
    if not callable(extract):
        raise PretrainError(f"{type(model).__name__} has no extract_feat(), so it has no features to use",
                            hint="Retrieval, kNN and `pretrain embed` need a model with extract_feat.")
    out = extract(images)
    if isinstance(out, tuple | list):
        out = out[-1] if out else None
    if not isinstance(out, Tensor) or out.dim() not in (2, 3, 4):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise PretrainError(f"{type(model).__name__}.extract_feat returned {shape}; expected (N, D), "
                            "(N, L, D) tokens or (N, C, H, W) maps")
    if out.dim() == 4:
        return out.mean(dim=(2, 3))  # (N, C)
    if out.dim() == 3:
        return out.mean(dim=1)  # (N, D)
    return out


@torch.no_grad()
def embed_batches(
    model: nn.Module, batches: Iterable[tuple[Any, Tensor]], *, autocast: Any, memory_format: Any,
    extract: Any = features_of,
) -> tuple[Tensor, Tensor]:
    """This rank's features (n, D) float32 and labels (n,) over ``batches`` (model in eval mode).

    Args:
        model: The model (put in eval mode here, restored after).
        batches: ``(images, labels)`` pairs.
        autocast: A zero-argument callable returning the autocast context.
        memory_format: Callable converting a batch to the run's memory format.
        extract: ``(model, images) -> (N, D)``.

    """
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for images, targets in batches:
            with autocast():
                f = extract(model, memory_format(images))
            feats.append(f.float())
            labels.append(targets.long())
    finally:
        model.train(was_training)
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    out = torch.cat(feats)
    if not bool(torch.isfinite(out).all()):
        raise PretrainError(f"{type(model).__name__} produced non-finite features (NaN or inf)",
                            hint="Check the weights (a diverged run?) and the precision (try fp32).")
    return out, torch.cat(labels)


def gather_in_order(local: Tensor, info: DistInfo | None, total: int) -> Tensor:
    """The full split from each rank's shard (rank r holds samples r, r + W, ...), in dataset order."""
    if info is None or not info.distributed:
        return local
    parts = gather_rows(local.to(info.device), info)
    out = parts[0].new_empty(total, *parts[0].shape[1:])
    for rank, part in enumerate(parts):
        out[rank :: info.world_size] = part
    return out.to(local.device)


def save_embeddings(path: str | Path, emb: Embeddings) -> Path:
    """Write ``emb`` as an embeddings file (atomically, with a checksum)."""
    path = Path(path)
    tensors = {"features": emb.feats.float().contiguous()}
    if emb.classes and bool((emb.labels >= 0).all()):
        tensors["labels"] = emb.labels.long().contiguous()
    meta = {**emb.meta, "format": EMBEDDINGS_FORMAT, "classes": json.dumps(list(emb.classes))}
    if path.parent != Path():
        path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.save_tensors(path, tensors, meta)
    return path


def _not_embeddings(path: str | Path, why: str) -> PretrainError:
    return PretrainError(f"{path} is not an embeddings file: {why}",
                         hint="Write one with `pretrain embed SPEC --weights W --split gallery -o FILE`.")


def load_embeddings(path: str | Path, loc: str = "data.gallery.embeddings") -> Embeddings:
    """Read an embeddings file (checksum verified).

    Raises:
        PretrainError: Missing, damaged, foreign or empty file (the message names ``loc``).

    """
    tensors, meta = ckpt.load_tensors(path)
    if meta.get("format") != EMBEDDINGS_FORMAT or "features" not in tensors:
        raise _not_embeddings(path, f"no {EMBEDDINGS_FORMAT} features (found {sorted(tensors)[:4]})")
    feats = tensors["features"].float()
    if feats.dim() != 2 or feats.shape[0] == 0:
        raise PretrainError(f"{loc}: {path} holds an empty gallery (features of shape {tuple(feats.shape)})",
                            hint="Embed a non-empty split.")
    classes = tuple(json.loads(meta.get("classes", "[]")))
    labels = tensors.get("labels")
    if labels is None:
        labels = torch.full((feats.shape[0],), -1, dtype=torch.long)
    elif labels.shape != (feats.shape[0],):
        raise _not_embeddings(path, f"labels {tuple(labels.shape)} do not match features {tuple(feats.shape)}")
    other = {k: v for k, v in meta.items() if k not in ("format", "classes")}
    return Embeddings(feats, labels.long(), classes, other)
