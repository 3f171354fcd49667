"""Weighted k-nearest-neighbour classification on frozen features (``[eval] knn``).

The InstDisc/DINO protocol (Wu et al. 2018; Caron et al. 2021, ``eval_knn.py``):
features are L2-normalised; for each query the ``k`` most similar gallery items
(cosine) vote for their class with weight ``exp(similarity / temperature)``; the
classes with the largest vote totals are the prediction, scored as ``knn/top{k}``.
Hits are counted per rank and summed across processes (the gallery is the full,
gathered one on every rank), so the result equals a single-process run.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pretrain.engine.distributed import DistInfo, all_reduce_sum
from pretrain.engine.retrieval import rank
from pretrain.errors import PretrainError
from pretrain.spec.eval_section import ExactSearch, FaissSearch, KNNConfig

__all__ = ["knn_predict", "knn_scores"]


def knn_predict(
    query: Tensor, gallery: Tensor, gallery_labels: Tensor, num_classes: int, cfg: KNNConfig,
    search: ExactSearch | FaissSearch | None = None,
) -> Tensor:
    """Class vote totals (N, C) of each query from its ``cfg.k`` nearest gallery items."""
    search = search or ExactSearch(type="exact")
    sims, idx = rank(query, gallery, cfg.k, "cosine", search)  # (N, k'), best first
    valid = idx >= 0  # faiss pads missing neighbours with -1
    weights = (sims / cfg.temperature).exp() * valid  # (N, k')
    labels = gallery_labels.to(idx.device)[idx.clamp(min=0)]  # (N, k')
    votes = torch.zeros(query.shape[0], num_classes, dtype=weights.dtype, device=query.device)
    return votes.scatter_add_(1, labels, weights)  # (N, C)


def knn_scores(
    query: Tensor, query_labels: Tensor, gallery: Tensor, gallery_labels: Tensor, *, num_classes: int,
    cfg: KNNConfig, search: ExactSearch | FaissSearch | None = None, info: DistInfo | None = None,
    chunk: int = 1024,
) -> dict[str, float]:
    """``knn/top{k}`` (percent) of this rank's queries, summed over ranks (a collective).

    Raises:
        PretrainError: An unlabelled gallery or query label.

    """
    if bool((gallery_labels < 0).any()) or bool((query_labels < 0).any()):
        raise PretrainError("kNN needs class labels on the gallery and the validation data, and some are "
                            "unlabelled", hint="Use labelled data for kNN (an ImageFolder with class folders).")
    ks = [k for k in cfg.topk if k <= num_classes] or [1]
    hits = torch.zeros(len(ks) + 1, dtype=torch.long, device=query.device)  # (hits per k, queries)
    for start in range(0, query.shape[0], chunk):
        votes = knn_predict(query[start : start + chunk], gallery, gallery_labels, num_classes, cfg, search)
        top = votes.topk(max(ks), dim=1).indices  # (n, maxk)
        correct = top.eq(query_labels[start : start + chunk].to(top.device).view(-1, 1))
        for i, k in enumerate(ks):
            hits[i] += correct[:, :k].any(dim=1).sum()
        hits[-1] += top.shape[0]
    if info is not None:
        hits = all_reduce_sum(hits, info)
    counts = hits.tolist()
    n = counts[-1]
    return {f"knn/top{k}": 100.0 * h / n if n else 0.0 for k, h in zip(ks, counts, strict=False)}
