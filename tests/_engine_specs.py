"""Tiny, real training specs for the engine tests (seconds on a CPU)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import tomli_w

#: ResNet_CIFAR-18 at width 4 on 8×8 grey digits (~11k parameters, BatchNorm).
TINY_RESNET: dict[str, Any] = {
    "type": "ImageClassifier",
    "in_channels": 1,
    "mean": [127.5],
    "std": [127.5],
    "backbone": {"type": "ResNet_CIFAR", "depth": 18, "in_channels": 1, "stem_channels": 4,
                 "base_channels": 4},
    "neck": {"type": "GlobalAveragePooling"},
    "head": {"type": "LinearClsHead", "num_classes": 10, "in_channels": 32, "topk": [1, 5]},
}

#: A tiny ViT (LayerNorm only, no BatchNorm): per-sample computations, so a DDP run
#: over shards equals one process over the whole batch.
TINY_VIT: dict[str, Any] = {
    "type": "ImageClassifier",
    "in_channels": 1,
    "mean": [127.5],
    "std": [127.5],
    "backbone": {"type": "VisionTransformer", "in_channels": 1, "img_size": 8, "patch_size": 4,
                 "arch": {"embed_dims": 16, "num_layers": 1, "num_heads": 2,
                          "feedforward_channels": 32}},
    "head": {"type": "LinearClsHead", "num_classes": 10, "in_channels": 16},
}


def digits_data(batch_size: int = 32, *, augment: bool = True, size: int = 8) -> dict[str, Any]:
    """The bundled digits at ``size`` px (random crops when ``augment``)."""
    train: dict[str, Any] = {"type": "Digits", "split": "train", "image_size": size}
    if augment:
        train["pipeline"] = [{"type": "RandomCrop", "size": size, "padding": 1}]
    return {"batch_size": batch_size, "val_batch_size": 128, "train": train,
            "val": {"type": "Digits", "split": "val", "image_size": size}}


def tiny_spec(model: dict[str, Any] | None = None, *, data: dict[str, Any] | None = None,
              **train: Any) -> dict[str, Any]:
    """A full spec: ``model`` (TINY_RESNET), ``data`` (digits) and ``train`` fields."""
    train_table: dict[str, Any] = {"epochs": 1, "optimizer": {"type": "SGD", "lr": 0.05},
                                   "device": "cpu"}
    train_table.update(train)
    return {
        "model": copy.deepcopy(model or TINY_RESNET),
        "data": data or digits_data(),
        "train": train_table,
        "eval": {"topk": [1, 5]},
    }


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    """Write ``spec`` as TOML and return the path."""
    path.write_text(tomli_w.dumps(spec), encoding="utf-8")
    return path
