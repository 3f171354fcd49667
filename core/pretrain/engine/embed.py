"""``pretrain embed``: a split's features (+ labels) written as an embeddings file.

Any model with ``extract_feat`` works (classifiers, retrievers, self-supervised
models); features are reduced to one vector per image exactly as retrieval and kNN
see them (:func:`pretrain.engine.embeddings.features_of`). Under torchrun every
rank encodes a shard and rank 0 writes the whole split, in dataset order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from pretrain.engine.embeddings import Embeddings, embed_batches, features_of, gather_in_order, save_embeddings
from pretrain.engine.evaluate import (
    autocast_context,
    load_eval_weights,
    model_num_classes,
    model_task,
    to_memory_format,
)
from pretrain.errors import PretrainError
from pretrain.spec.data_section import DatasetSpec

__all__ = ["embed_split"]


def embed_split(
    spec: Any, weights: str | Path, *, split: str, output: str | Path, device: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Encode ``data.<split>`` with ``weights`` and write ``output`` (rank 0).

    Returns:
        ``output``, ``num_images``, ``dim``, ``split``, ``weights``.

    Raises:
        PretrainError: No such split (or a gallery given as a file), unusable weights.

    """
    from pretrain.assembly.assemble import build_node
    from pretrain.engine import checkpoint as ckpt
    from pretrain.engine.data import build_loaders
    from pretrain.engine.distributed import init_distributed
    from pretrain.engine.memory_format import to_channels_last

    data = spec.sections.get("data")
    table = getattr(data, split, None) if data is not None else None
    if not isinstance(table, DatasetSpec):
        what = "is an embeddings file already" if table is not None else "is not in the spec"
        raise PretrainError(f"data.{split} {what}, so there is nothing to embed",
                            hint=f"Add a [data.{split}] dataset table (or pick another --split).")
    train = spec.sections.get("train")
    precision = train.precision if train is not None else "fp32"
    info = init_distributed(device or (train.device if train is not None else "auto"))
    tensors, _ = ckpt.load_tensors(weights)
    model = build_node(spec.model, init=False).to(info.device)
    note = load_eval_weights(model, tensors, weights)
    if note and info.is_main and console is not None:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    channels_last = bool(train is not None and train.channels_last and info.device.type != "mps")
    if channels_last:
        to_channels_last(model, info.device)
    task = model_task(model)
    wanted = "train_eval" if split == "train" else split
    loaders = build_loaders(
        data, device=info.device, distributed=info.distributed, rank=info.rank, world_size=info.world_size,
        seed=0, num_classes=None if task == "retrieval" else model_num_classes(model),
        in_channels=getattr(model, "in_channels", None), splits=(wanted,), retrieval=task == "retrieval",
    )
    loader = {"train_eval": loaders.train_eval, "val": loaders.val, "gallery": loaders.gallery}[wanted]
    assert loader is not None
    feats, labels = embed_batches(
        model, loader, autocast=lambda: autocast_context(info.device, precision),
        memory_format=lambda x: to_memory_format(x, channels_last), extract=features_of,
    )
    feats = gather_in_order(feats.to(info.device), info, loader.total_samples)
    labels = gather_in_order(labels.to(info.device), info, loader.total_samples)
    split_info = loaders.info[wanted]
    if info.is_main:
        meta = {"split": split, "weights": str(weights), "model": type(model).__name__}
        save_embeddings(output, Embeddings(feats.cpu(), labels.cpu(), split_info.classes, meta))
    return {"output": str(output), "num_images": int(feats.shape[0]), "dim": int(feats.shape[1]),
            "split": split, "weights": str(weights)}
