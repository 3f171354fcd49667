"""Weighted kNN accuracy of a pretrained encoder vs a random one (no training at all).

The probe spec's model (e.g. ``examples/specs/swin-tiny_digits_linear_probe.toml``) is
built twice: with its backbone's ``Pretrained`` rule pointing at ``--weights`` and without
it (random init, same seed). Features of the digits ``train`` split are the memory bank,
``val`` images are classified by a cosine-similarity kNN vote weighted by
``exp(sim / T)`` (solo-learn's ``WeightedKNNClassifier``: k = 20, T = 0.07). Features
come from ``extract_feat`` (the neck's output: pooled maps, or the ViT's cls token).

Usage::

    python bench/knn_probe.py --probe-spec examples/specs/swin-tiny_digits_linear_probe.toml \\
        --weights runs/simmim_swin-tiny_digits/checkpoints/last.safetensors

Seconds on 2 CPU cores; prints both accuracies and their difference, measured in one run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

import pretrain
from pretrain_builtins.datasets.digits import Digits


def features(model: Any, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = [model.extract_feat(images[i:i + batch])[-1].flatten(1) for i in range(0, len(images), batch)]
    return torch.nn.functional.normalize(torch.cat(out).float(), dim=1)


def knn_accuracy(train: torch.Tensor, train_y: torch.Tensor, val: torch.Tensor, val_y: torch.Tensor,
                 k: int = 20, t: float = 0.07, classes: int = 10) -> float:
    sim = val @ train.t()  # (V, N) cosine similarities
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(len(val), classes).scatter_add_(1, train_y[idx], (top / t).exp())
    return float((votes.argmax(1) == val_y).float().mean() * 100)


def build(spec: dict[str, Any], weights: Path | None, seed: int) -> Any:
    backbone = spec["model"]["backbone"]
    if weights is None:
        backbone.pop("init", None)
    else:
        backbone["init"] = [{"type": "Pretrained", "checkpoint": str(weights), "prefix": "backbone.",
                             "key_map": [[r"^backbone\.mask_token$", ""]]}]
    return pretrain.build(spec, seed=seed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probe-spec", type=Path, required=True, help="classifier spec whose backbone is probed")
    parser.add_argument("--weights", type=Path, required=True, help="pretraining checkpoint (backbone.* keys)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--t", type=float, default=0.07)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random encoder")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    raw = pretrain.load_spec(str(args.probe_spec))
    size = int(raw["data"]["train"].get("image_size", 8))
    train_x, train_y = Digits(split="train", image_size=size).load_all()
    val_x, val_y = Digits(split="val", image_size=size).load_all()
    result = {}
    for name, weights in (("pretrained", args.weights.resolve()), ("random", None)):
        model = build(json.loads(json.dumps(raw)), weights, args.seed)
        result[name] = round(knn_accuracy(features(model, train_x.float()), train_y, features(model, val_x.float()),
                                          val_y, args.k, args.t), 2)
    result["difference"] = round(result["pretrained"] - result["random"], 2)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"kNN (k={args.k}, T={args.t}) on digits val (359 images): pretrained {result['pretrained']:.2f} %, "
              f"random {result['random']:.2f} %, difference {result['difference']:+.2f} points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
