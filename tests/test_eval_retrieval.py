"""Evaluation end to end: a retriever from a classifier's weights, embeddings files, index-labelled
queries, and training runs that record retrieval, kNN and classification metrics."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from _engine_specs import TINY_RESNET, digits_data, tiny_spec, write_spec
from conftest import run_cli
from pretrain.assembly.assemble import build_model
from pretrain.engine import checkpoint as ckpt
from pretrain.engine.api import embed, evaluate, train
from pretrain.engine.embeddings import load_embeddings
from pretrain.errors import PretrainError
from test_retrieval import reference
from test_retriever import _inshop

RETRIEVER = {k: copy.deepcopy(v) for k, v in TINY_RESNET.items() if k != "head"}
RETRIEVER["type"] = "ImageToImageRetriever"


def _retriever_spec(**eval_: Any) -> dict[str, Any]:
    data = digits_data(augment=False)
    data["gallery"] = {"type": "Digits", "split": "train", "image_size": 8}
    return {"model": copy.deepcopy(RETRIEVER), "data": data, "eval": {"topk": [1, 5], **eval_}}


@pytest.fixture(scope="module")
def classifier_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny classifier after a few steps (a head, and features better than random)."""
    run = tmp_path_factory.mktemp("cls") / "run"
    spec = tiny_spec(max_steps=15, optimizer={"type": "SGD", "lr": 0.1, "momentum": 0.9})
    train(spec, run_dir=run)
    return run / "checkpoints" / "last.safetensors"


@pytest.mark.slow
def test_classifier_weights_evaluate_as_a_retriever(classifier_weights: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "r.toml", _retriever_spec(knn={"k": 10}))
    proc = run_cli("eval", str(spec), "--weights", str(classifier_weights), "--device", "cpu", "--json",
                   env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout)
    assert "ignored 2 tensor(s) of head.*" in proc.stderr
    assert metrics["num_queries"] == 359 and metrics["gallery_size"] == 1438
    assert set(metrics) >= {"retrieval/Recall@1", "retrieval/Recall@5", "retrieval/mAP@1", "retrieval/mAP@5",
                            "knn/top1", "knn/top5"}
    assert 10 < metrics["retrieval/Recall@1"] <= metrics["retrieval/Recall@5"] <= 100
    # The same numbers by brute force over the features of both splits (float64; a near tie may
    # order differently than in float32, so allow one query's worth: 100 / 359 %).
    q = embed(spec, classifier_weights, split="val", output=tmp_path / "q.safetensors", device="cpu")
    assert (q["num_images"], q["dim"]) == (359, 32)
    embed(spec, classifier_weights, split="gallery", output=tmp_path / "g.safetensors", device="cpu")
    query, gallery = load_embeddings(tmp_path / "q.safetensors"), load_embeddings(tmp_path / "g.safetensors")
    matches = [set((gallery.labels == int(t)).nonzero().view(-1).tolist()) for t in query.labels]
    want = reference(query.feats, gallery.feats, matches, (1, 5))
    for key, value in want.items():
        assert metrics[key] == pytest.approx(value, abs=100 / 359), key


def test_a_missing_weight_is_an_error(classifier_weights: Path, tmp_path: Path) -> None:
    tensors, _ = ckpt.load_tensors(classifier_weights)
    del tensors["backbone.conv1.weight"]
    partial = tmp_path / "partial.safetensors"
    ckpt.save_tensors(partial, tensors, {})
    with pytest.raises(PretrainError, match=r"missing backbone\.conv1\.weight"):
        evaluate(_retriever_spec(), partial, device="cpu")


def test_embeddings_file_is_the_same_gallery(classifier_weights: Path, tmp_path: Path) -> None:
    spec = _retriever_spec()
    out = embed(spec, classifier_weights, split="gallery", output=tmp_path / "g.safetensors", device="cpu")
    assert (out["num_images"], out["dim"]) == (1438, 32)
    emb = load_embeddings(tmp_path / "g.safetensors")
    assert emb.classes == tuple(str(d) for d in range(10)) and emb.labels.shape == (1438,)
    from_data = evaluate(spec, classifier_weights, device="cpu")
    spec["data"]["gallery"] = {"embeddings": str(tmp_path / "g.safetensors")}
    from_file = evaluate(spec, classifier_weights, device="cpu")
    for key in ("retrieval/Recall@1", "retrieval/Recall@5", "retrieval/mAP@5"):
        assert from_file[key] == from_data[key]
    # Any model with extract_feat: the classifier's train split through the val pipeline.
    cls_spec = tiny_spec()
    done = embed(cls_spec, classifier_weights, split="train", output=tmp_path / "t.safetensors", device="cpu")
    assert done["num_images"] == 1438 and load_embeddings(tmp_path / "t.safetensors").feats.shape == (1438, 32)


def test_index_labelled_queries_end_to_end(tmp_path: Path) -> None:
    root = _inshop(tmp_path / "inshop")
    model_spec = {"type": "ImageToImageRetriever", "similarity": "dot",
                  "backbone": {"type": "ResNet_CIFAR", "depth": 18, "stem_channels": 4, "base_channels": 4},
                  "neck": {"type": "GlobalAveragePooling"}}
    split = {"type": "InShop", "data_root": str(root), "image_size": 8}
    spec = {"model": model_spec, "data": {"batch_size": 2, "val": {**split, "split": "query"},
                                          "gallery": {**split, "split": "gallery"}},
            "eval": {"topk": [1, 2, 3]}}
    torch.manual_seed(0)
    model = build_model(spec).eval()
    weights = tmp_path / "w.safetensors"
    ckpt.save_tensors(weights, model.state_dict(), {})
    metrics = evaluate(spec, weights, device="cpu")
    from pretrain_builtins.datasets.inshop import InShop

    fields = {k: v for k, v in split.items() if k != "type"}
    query, gallery = InShop(**fields, split="query"), InShop(**fields, split="gallery")
    with torch.no_grad():
        q, g = model.extract_feat(query.load_all()[0]), model.extract_feat(gallery.load_all()[0])
    want = reference(q, g, [set(m) for m in query.gallery_matches()], (1, 2, 3), "dot")
    assert metrics["num_queries"] == 3 and metrics["gallery_size"] == 3
    for key, value in want.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key


def test_training_records_retrieval_knn_and_classification_metrics(tmp_path: Path) -> None:
    # A retriever trained with ArcFace keeps its best checkpoint by Recall@1.
    spec = _retriever_spec(knn={"k": 5})
    spec["model"]["head"] = {"type": "ArcFaceClsHead", "num_classes": 10, "in_channels": 32, "scale": 16.0}
    spec["train"] = {"epochs": 2, "max_steps": 6, "optimizer": {"type": "SGD", "lr": 0.05}, "device": "cpu"}
    record = train(spec, run_dir=tmp_path / "arcface")
    assert {"retrieval/Recall@1", "retrieval/mAP@5", "knn/top1"} <= set(record)
    info = json.loads((tmp_path / "arcface" / "checkpoints" / "last.json").read_text())
    assert info["best_metric"] == "retrieval/Recall@1"
    again = evaluate(spec, tmp_path / "arcface" / "checkpoints" / "last.safetensors", device="cpu")
    assert again["retrieval/Recall@1"] == record["retrieval/Recall@1"]
    # A classifier records precision/recall/F1, kNN, and draws its confusion matrix.
    cls = tiny_spec(max_steps=3, best_metric="knn/top1")
    cls["eval"]["knn"] = {"k": 5}
    record = train(cls, run_dir=tmp_path / "cls")
    assert {"single-label/precision", "single-label/f1-score", "knn/top1", "knn/top5"} <= set(record)
    assert (tmp_path / "cls" / "confusion_matrix.png").stat().st_size > 0
    assert json.loads((tmp_path / "cls" / "checkpoints" / "last.json").read_text())["best_metric"] == "knn/top1"


def test_self_supervised_runs_keep_the_best_checkpoint_by_knn(tmp_path: Path) -> None:
    from pretrain_builtins.models.mae import MAE

    model = {"type": "MAE", **copy.deepcopy(MAE.example_config), "mean": [127.5], "std": [127.5]}
    model["backbone"]["in_channels"] = 1
    model["neck"]["in_chans"] = 1
    model["head"]["in_channels"] = 1
    data = digits_data(augment=False, size=32)
    spec = {"model": model, "data": data, "eval": {"knn": {"k": 10}},
            "train": {"epochs": 1, "max_steps": 2, "optimizer": {"type": "AdamW", "lr": 1e-3},
                      "device": "cpu", "best_metric": "knn/top1"}}
    record = train(spec, run_dir=tmp_path / "mae")
    assert {"val_loss", "knn/top1", "knn/top5"} <= set(record)
    assert record["knn/top1"] > 10.0  # better than chance on 10 classes, even barely trained
    info = json.loads((tmp_path / "mae" / "checkpoints" / "last.json").read_text())
    assert info["best_metric"] == "knn/top1" and info["best_epoch"] == 1


@pytest.mark.slow
def test_quickstart_classifier_is_a_good_retriever_and_knn_classifier(tmp_path: Path) -> None:
    """The figures of docs/retrieval.md: Recall@1 and kNN top-1 of the quick-start weights >= 97 %."""
    specs = Path(__file__).resolve().parents[1] / "examples" / "specs"
    train(specs / "quickstart.toml", run_dir=tmp_path / "quickstart", overrides=["train.device=cpu"])
    metrics = evaluate(specs / "retriever_digits.toml", tmp_path / "quickstart", device="cpu")
    assert metrics["num_queries"] == 359 and metrics["gallery_size"] == 1438
    assert metrics["retrieval/Recall@1"] >= 97.0
    assert metrics["knn/top1"] >= 97.0


def test_self_supervised_training_on_an_unlabelled_folder(tmp_path: Path) -> None:
    from PIL import Image

    from pretrain_builtins.models.mae import MAE

    gen = torch.Generator().manual_seed(0)
    for rel in ["a.png", "holiday/b.png", "holiday/day2/c.png", "d.png"]:
        path = tmp_path / "photos" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (32, 32, 3), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(path)
    folder = {"type": "ImageFolder", "root": str(tmp_path / "photos"), "labels": False, "image_size": 32}
    spec = {"model": {"type": "MAE", **copy.deepcopy(MAE.example_config)},
            "data": {"batch_size": 2, "train": folder, "val": folder},
            "train": {"epochs": 1, "optimizer": {"type": "AdamW", "lr": 1e-3}, "device": "cpu"}}
    record = train(spec, run_dir=tmp_path / "run")
    assert record["step"] == 2 and record["val_loss"] > 0
    spec["eval"] = {"knn": {"k": 2}}  # kNN needs labels: refused before any work
    with pytest.raises(PretrainError, match="no class labels"):
        evaluate(spec, tmp_path / "run", device="cpu")
