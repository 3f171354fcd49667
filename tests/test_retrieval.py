"""Retrieval and kNN: the chunked search and the metrics against brute-force references.

The references below loop over queries in float64 with a plain sort (score
descending, gallery index ascending on ties) and apply MMPretrain's definitions
(``RetrievalRecall``: any match in the top K; ``RetrievalAveragePrecision``: the sum
of precision at matching ranks within K over the number of matches in the gallery).
"""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.components import MetricContext, ranked_topk, search_topk, similarity_scores
from pretrain.engine.knn import knn_scores
from pretrain.engine.metrics import MetricSet
from pretrain.engine.retrieval import Gallery, QueryLabels, rank, relevance_batches
from pretrain.spec.context import ValidationContext
from pretrain.spec.eval_section import ExactSearch, FaissSearch, KNNConfig

CPU = torch.device("cpu")


def reference(query, gallery, matches, ks, similarity="cosine", mode="IR"):
    """Recall@K and mAP@K by brute force; ``matches[i]`` is the set of gallery indices query i matches."""
    q, g = query.double(), gallery.double()
    if similarity == "cosine":
        q, g = q / q.norm(dim=1, keepdim=True), g / g.norm(dim=1, keepdim=True)
    recall, ap = {k: 0.0 for k in ks}, {k: 0.0 for k in ks}
    for i in range(q.shape[0]):
        if similarity == "euclidean":
            scores = [-float((q[i] - g[j]).norm()) for j in range(g.shape[0])]
        else:
            scores = [float(q[i] @ g[j]) for j in range(g.shape[0])]
        order = sorted(range(g.shape[0]), key=lambda j: (-scores[j], j))
        for k in ks:
            top = order[:k]
            recall[k] += 100.0 * any(j in matches[i] for j in top)
            hits, total = 0, 0.0
            for r, j in enumerate(top):
                if j in matches[i]:
                    if mode == "IR":
                        total += (hits + 1) / (r + 1)
                    else:
                        before = hits / r if r > 0 else 1.0
                        total += (before + (hits + 1) / (r + 1)) / 2
                    hits += 1
            ap[k] += 100.0 * total / max(len(matches[i]), 1)
    n = q.shape[0]
    return {**{f"retrieval/Recall@{k}": v / n for k, v in recall.items()},
            **{f"retrieval/mAP@{k}": v / n for k, v in ap.items()}}


def engine(query, gallery, queries, gallery_labels, ks, similarity="cosine", chunk=None, mode="IR"):
    """What the evaluator computes: rank, relevance, then the retrieval metrics."""
    ctx = ValidationContext()
    nodes = ctx.components("metric", [{"type": "RetrievalRecall"},
                                      {"type": "RetrievalAveragePrecision", "mode": mode}], "eval.metrics")
    assert not ctx.issues
    g = Gallery(gallery, gallery_labels, (), "test")
    _, idx = rank(query, gallery, max(ks), similarity, ExactSearch(type="exact", chunk_size=chunk))
    metrics = MetricSet(nodes, MetricContext(num_classes=None, topk=tuple(ks), device=CPU))
    for inputs in relevance_batches(idx, queries, g, chunk=chunk or 1024):
        metrics.update(inputs)
    return metrics.compute().scalars


def assert_same(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("similarity", ["cosine", "dot", "euclidean"])
def test_class_labelled_gallery_equals_brute_force(similarity: str) -> None:
    gen = torch.Generator().manual_seed(0)
    query, gallery = torch.randn(37, 8, generator=gen), torch.randn(53, 8, generator=gen)
    q_lab, g_lab = torch.randint(0, 5, (37,), generator=gen), torch.randint(0, 5, (53,), generator=gen)
    matches = [{j for j in range(53) if g_lab[j] == q_lab[i]} for i in range(37)]
    ks = (1, 5, 10)
    want = reference(query, gallery, matches, ks, similarity)
    for chunk in (None, 1, 7):  # chunked equals unchunked
        assert_same(engine(query, gallery, QueryLabels(q_lab), g_lab, ks, similarity, chunk), want)


@pytest.mark.parametrize("mode", ["IR", "integrate"])
def test_index_labelled_queries_equal_brute_force(mode: str) -> None:
    gen = torch.Generator().manual_seed(1)
    query, gallery = torch.randn(20, 6, generator=gen), torch.randn(30, 6, generator=gen)
    matches = [sorted(set(torch.randint(0, 30, (int(n),), generator=gen).tolist()))
               for n in torch.randint(0, 5, (20,), generator=gen)]  # some queries match nothing
    queries = QueryLabels(torch.arange(20), matches)
    unlabelled = torch.full((30,), -1)
    ks = (1, 3, 8)
    want = reference(query, gallery, [set(m) for m in matches], ks, mode=mode)
    assert_same(engine(query, gallery, queries, unlabelled, ks, chunk=3, mode=mode), want)
    assert_same(engine(query, gallery, queries, unlabelled, ks, mode=mode), want)


def test_ties_rank_the_lower_gallery_index_first_whatever_the_chunk() -> None:
    # Integer vectors and dot products: exact arithmetic, many exactly equal scores.
    gen = torch.Generator().manual_seed(2)
    gallery = torch.randint(-1, 2, (40, 3), generator=gen).float()
    query = torch.randint(-1, 2, (25, 3), generator=gen).float()
    q_lab, g_lab = torch.randint(0, 3, (25,), generator=gen), torch.randint(0, 3, (40,), generator=gen)
    matches = [{j for j in range(40) if g_lab[j] == q_lab[i]} for i in range(25)]
    want = reference(query, gallery, matches, (1, 2, 7), "dot")
    for chunk in (None, 1, 4):
        assert_same(engine(query, gallery, QueryLabels(q_lab), g_lab, (1, 2, 7), "dot", chunk), want)
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    values, index = ranked_topk(scores, 3)
    assert index.tolist() == [[1, 2, 4]] and values.tolist() == [[3.0, 3.0, 3.0]]
    assert ranked_topk(scores, 4)[1].tolist() == [[1, 2, 4, 3]]


def test_k_larger_than_the_gallery_means_the_whole_gallery() -> None:
    gen = torch.Generator().manual_seed(3)
    query, gallery = torch.randn(9, 4, generator=gen), torch.randn(6, 4, generator=gen)
    q_lab, g_lab = torch.randint(0, 2, (9,), generator=gen), torch.randint(0, 2, (6,), generator=gen)
    matches = [{j for j in range(6) if g_lab[j] == q_lab[i]} for i in range(9)]
    got = engine(query, gallery, QueryLabels(q_lab), g_lab, (1, 6, 50))
    assert_same(got, reference(query, gallery, matches, (1, 6, 50)))
    assert got["retrieval/Recall@50"] == got["retrieval/Recall@6"]
    assert search_topk(query, gallery, 50, "cosine")[1].shape == (9, 6)


def test_mmpretrain_docstring_examples() -> None:
    # RetrievalRecall.calculate([[0], [1], [2], [3]], [[0, 1], [2], [1], [0, 3]], topk=1, indices) -> 50.
    # Queries as one-hot embeddings of their top item, gallery = identity.
    preds, targets = [0, 1, 2, 3], [[0, 1], [2], [1], [0, 3]]
    query = torch.nn.functional.one_hot(torch.tensor(preds), 4).float()
    got = engine(query, torch.eye(4), QueryLabels(torch.arange(4), targets), torch.full((4,), -1), (1,), "dot")
    assert got["retrieval/Recall@1"] == 50.0


def test_similarity_scores_match_their_definitions() -> None:
    gen = torch.Generator().manual_seed(4)
    q, g = torch.randn(3, 5, generator=gen), torch.randn(4, 5, generator=gen)
    cos = torch.nn.functional.cosine_similarity(q[:, None], g[None], dim=-1)
    torch.testing.assert_close(similarity_scores(q, g, "cosine"), cos)
    torch.testing.assert_close(similarity_scores(q, g, "dot"), q @ g.T)
    torch.testing.assert_close(similarity_scores(q, g, "euclidean"), -torch.cdist(q, g))


def test_search_refuses_different_widths() -> None:
    with pytest.raises(Exception, match="8 features but the gallery's have 6"):
        search_topk(torch.zeros(2, 8), torch.zeros(3, 6), 1, "cosine")


def test_faiss_recall_against_exact_search() -> None:
    pytest.importorskip("faiss", reason="faiss is an optional extra (pip install 'pretrain[faiss]')")
    gen = torch.Generator().manual_seed(5)
    centers = torch.randn(50, 32, generator=gen)
    gallery = centers.repeat(40, 1) + 0.3 * torch.randn(2000, 32, generator=gen)
    query = centers.repeat(4, 1) + 0.3 * torch.randn(200, 32, generator=gen)
    for similarity in ("cosine", "euclidean"):
        _, exact = search_topk(query, gallery, 10, similarity)
        for index, params in (("HNSW32", {"efSearch": 64.0}), ("IVF16,Flat", {"nprobe": 4.0})):
            scores, approx = rank(query, gallery, 10, similarity, FaissSearch(type="faiss", index=index,
                                                                               params=params))
            overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(approx, exact, strict=True))
            assert overlap / exact.numel() >= 0.9, (similarity, index)
            assert scores.shape == (200, 10)


def reference_knn(query, q_lab, gallery, g_lab, c, k, t, ks):
    """DINO's ``knn_classifier`` per query, in float64."""
    q = query.double() / query.double().norm(dim=1, keepdim=True)
    g = gallery.double() / gallery.double().norm(dim=1, keepdim=True)
    hits = dict.fromkeys(ks, 0)
    for i in range(q.shape[0]):
        sims = (g @ q[i]).tolist()
        order = sorted(range(len(sims)), key=lambda j: (-sims[j], j))[:k]
        votes = [0.0] * c
        for j in order:
            votes[int(g_lab[j])] += math.exp(sims[j] / t)
        ranked = sorted(range(c), key=lambda cls: -votes[cls])
        for kk in ks:
            hits[kk] += int(q_lab[i]) in ranked[:kk]
    return {f"knn/top{kk}": 100.0 * h / q.shape[0] for kk, h in hits.items()}


def test_knn_equals_the_dino_protocol_by_brute_force() -> None:
    gen = torch.Generator().manual_seed(6)
    centers = torch.randn(6, 16, generator=gen)
    g_lab, q_lab = torch.randint(0, 6, (120,), generator=gen), torch.randint(0, 6, (45,), generator=gen)
    gallery = centers[g_lab] + 2.5 * torch.randn(120, 16, generator=gen)
    query = centers[q_lab] + 2.5 * torch.randn(45, 16, generator=gen)
    cfg = KNNConfig(k=7, temperature=0.1)
    want = reference_knn(query, q_lab, gallery, g_lab, 6, 7, 0.1, (1, 5))
    for chunk in (1024, 4):
        got = knn_scores(query, q_lab, gallery, g_lab, num_classes=6, cfg=cfg, chunk=chunk)
        assert got == pytest.approx(want)
    assert 20 < want["knn/top1"] < 100  # a non-trivial case (chance: 16.7)
