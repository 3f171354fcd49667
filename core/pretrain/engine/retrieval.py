"""Ranking a gallery for every query, and what retrieval metrics and kNN are fed.

Queries stay sharded across processes (each rank ranks its own); the gallery is
gathered in full on every rank, so each query sees exactly the gallery a single
process would, and the metrics' per-query sums add up to the single-process sums.

Relevance comes in two kinds:

- **class-labelled** gallery: an item matches a query of the same class;
- **index-labelled** queries (InShop): each query lists its matching gallery indices
  (its label is its own index in the query set).

Search is exact by default (chunks of queries against the whole gallery, see
:func:`pretrain.components.search_topk`), or approximate through faiss
(``eval.search = {type = "faiss"}``) for galleries too large for that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain.components import MetricInputs, Similarity, search_topk
from pretrain.errors import PretrainError
from pretrain.spec.eval_section import ExactSearch, FaissSearch

__all__ = ["Gallery", "QueryLabels", "rank", "relevance_batches"]


@dataclass
class Gallery:
    """The items queries are ranked against (the same on every rank).

    Attributes:
        feats: float32 (M, D) on the evaluation device.
        labels: int64 (M,) class labels, -1 where unlabelled.
        classes: Class names of ``labels`` (empty when unlabelled).
        source: Where it came from, for messages (``data.gallery``).

    """

    feats: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    source: str


@dataclass
class QueryLabels:
    """How queries are labelled: class labels, or lists of matching gallery indices.

    Attributes:
        labels: (N,) class labels, or each query's index into ``matches``.
        matches: Index-labelled: matching gallery indices of every query of the set.

    """

    labels: Tensor
    matches: Sequence[Sequence[int]] | None = None


def rank(
    query: Tensor, gallery: Tensor, k: int, similarity: Similarity, search: ExactSearch | FaissSearch,
) -> tuple[Tensor, Tensor]:
    """The top ``k`` gallery items of each query: ``(scores, indices)`` (N, min(k, M)), best first."""
    if isinstance(search, FaissSearch):
        return _faiss_rank(query, gallery, k, similarity, search)
    return search_topk(query, gallery, k, similarity, chunk_size=search.chunk_size)


def _faiss_rank(
    query: Tensor, gallery: Tensor, k: int, similarity: Similarity, cfg: FaissSearch,
) -> tuple[Tensor, Tensor]:
    try:
        import faiss
    except ImportError:
        raise PretrainError("eval.search.type = 'faiss' needs the faiss package, which is not installed",
                            hint="pip install 'pretrain[faiss]' (faiss-cpu), or use type = \"exact\".") from None
    import numpy as np

    if query.shape[0] == 0 or query.shape[1] != gallery.shape[1]:
        return search_topk(query, gallery, k, similarity)  # nothing to rank, or the width error
    if similarity == "cosine":
        query, gallery = F.normalize(query, dim=1), F.normalize(gallery, dim=1)
    metric = faiss.METRIC_L2 if similarity == "euclidean" else faiss.METRIC_INNER_PRODUCT
    g = np.ascontiguousarray(gallery.detach().float().cpu().numpy())
    q = np.ascontiguousarray(query.detach().float().cpu().numpy())
    try:
        index = faiss.index_factory(g.shape[1], cfg.index, metric)
        if not index.is_trained:
            index.train(g)
        index.add(g)
        space = faiss.ParameterSpace()
        for name, value in cfg.params.items():
            space.set_index_parameter(index, name, value)
    except RuntimeError as exc:
        raise PretrainError(f"eval.search: faiss cannot build index {cfg.index!r} over {g.shape[0]} gallery "
                            f"items of width {g.shape[1]}: {str(exc).strip().splitlines()[-1]}",
                            hint="Pick an index_factory string that fits the gallery (IVF needs more items "
                            "than lists), e.g. HNSW32 or Flat.") from None
    width = min(k, g.shape[0])
    dist, idx = index.search(q, width)
    scores = torch.from_numpy(dist).to(query.device)
    if similarity == "euclidean":
        scores = -scores.clamp(min=0).sqrt()  # faiss reports squared distances
    return scores, torch.from_numpy(idx).long().to(query.device)


def _class_counts(labels: Tensor) -> Tensor:
    valid = labels[labels >= 0]
    size = int(valid.max()) + 1 if valid.numel() else 1
    return torch.bincount(valid, minlength=size)


def relevance_batches(
    indices: Tensor, queries: QueryLabels, gallery: Gallery, *, chunk: int = 1024,
) -> list[MetricInputs]:
    """Retrieval metric inputs, ``chunk`` queries at a time.

    Args:
        indices: (N, K) ranked gallery indices of this rank's queries (-1: no item, faiss).
        queries: Their labels.
        gallery: What was ranked.
        chunk: Queries per batch (bounds the (chunk, M) match mask of index-labelled queries).

    """
    out = []
    m = gallery.feats.shape[0]
    counts = _class_counts(gallery.labels) if queries.matches is None else None
    for start in range(0, indices.shape[0], chunk):
        idx = indices[start : start + chunk]  # (n, K)
        lab = queries.labels[start : start + chunk].to(idx.device)  # (n,)
        valid = idx >= 0
        safe = idx.clamp(min=0)
        if queries.matches is None:
            assert counts is not None
            rel = (gallery.labels.to(idx.device)[safe] == lab.view(-1, 1)) & valid  # (n, K)
            in_range = (lab >= 0) & (lab < counts.numel())
            num = torch.where(in_range, counts.to(idx.device)[lab.clamp(0, counts.numel() - 1)], 0)
        else:
            mask = torch.zeros(idx.shape[0], m, dtype=torch.bool, device=idx.device)  # (n, M)
            rows = [(r, j) for r, q in enumerate(lab.tolist()) for j in queries.matches[q]]
            if rows:
                at = torch.tensor(rows, dtype=torch.long, device=idx.device)
                if int(at[:, 1].max()) >= m:
                    raise PretrainError(
                        f"a query lists gallery index {int(at[:, 1].max())}, but {gallery.source} holds {m} items",
                        hint="The query set and the gallery must come from one annotation (e.g. both InShop "
                        "splits of one data_root).",
                    )
                mask[at[:, 0], at[:, 1]] = True
            rel = mask.gather(1, safe) & valid
            num = mask.sum(dim=1)
        out.append(MetricInputs(relevance=rel, num_relevant=num))
    return out
