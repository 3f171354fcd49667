"""ArcFaceClsHead, ImageToImageRetriever, InShop and unlabelled ImageFolder; spec checks of retrieval."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from pretrain.engine.preflight import check_model
from pretrain.errors import PretrainError, SpecError
from pretrain.spec.files import load_spec
from pretrain.spec.validate import validate_spec
from pretrain_builtins.heads.arcface_head import ArcFaceClsHead
from pretrain_builtins.models.retriever import ImageToImageRetriever

SPECS = Path(__file__).resolve().parents[1] / "examples" / "specs"


def test_mmpretrain_inshop_arcface_port_has_their_parameter_count() -> None:
    spec = validate_spec(load_spec(SPECS / "resnet50-arcface_inshop.toml"))
    report = check_model(spec)
    assert report.issues == []
    assert report.params == 31_693_888  # MMPretrain resnet50-arcface_8xb32_inshop
    head = spec.model.child("head")
    assert head is not None and head.params["num_classes"] == 3997


def test_arcface_adds_the_margin_to_the_target_class_only() -> None:
    torch.manual_seed(0)
    head = ArcFaceClsHead(num_classes=4, in_channels=3, scale=10.0, margins=0.3)
    feats = (torch.randn(5, 3),)
    labels = torch.tensor([0, 1, 2, 3, 1])
    cos = (torch.nn.functional.normalize(feats[0]) @ torch.nn.functional.normalize(head.norm_product.weight).T).detach()
    logits = head(feats, labels)
    expected = 10.0 * cos.clone()
    for i, y in enumerate(labels.tolist()):
        theta = math.acos(float(cos[i, y].detach()))
        phi = math.cos(theta + 0.3) if float(cos[i, y]) > math.cos(math.pi - 0.3) else float(cos[i, y]) - math.sin(0.3) * 0.3
        expected[i, y] = 10.0 * phi
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head.predict(feats), (10.0 * cos).softmax(-1), rtol=1e-5, atol=1e-6)
    # A one-hot dense target is the index target; a Mixup target interpolates the margin.
    onehot = torch.nn.functional.one_hot(labels, 4).float()
    torch.testing.assert_close(head(feats, onehot), logits)
    mixed = 0.7 * onehot + 0.3 * onehot.roll(1, 0)
    torch.testing.assert_close(head(feats, mixed), 0.7 * logits + 0.3 * head(feats, labels.roll(1, 0)))
    assert torch.isfinite(head.loss(feats, mixed)["loss"])


def test_arcface_subcenters_margins_and_gradients(tmp_path: Path) -> None:
    head = ArcFaceClsHead(num_classes=3, in_channels=4, num_subcenters=2, margins=[0.1, 0.2, 0.3])
    assert head.norm_product.weight.shape == (6, 4)
    x = torch.randn(2, 4)
    cos_all = torch.nn.functional.normalize(x) @ torch.nn.functional.normalize(head.norm_product.weight).T
    torch.testing.assert_close(head.cosine((x,)), cos_all.view(2, 3, 2).amax(2))
    file = tmp_path / "margins.txt"
    file.write_text("0.1\n0.2\n\n0.3\n")
    assert head.margins.tolist() == pytest.approx(ArcFaceClsHead(num_classes=3, in_channels=4,
                                                                 margins=str(file)).margins.tolist())
    with pytest.raises(ValueError, match="holds 3 margins but num_classes is 4"):
        ArcFaceClsHead(num_classes=4, in_channels=4, margins=str(file))
    with pytest.raises(ValueError, match="list has 2 margins"):
        ArcFaceClsHead(num_classes=3, in_channels=4, margins=[0.1, 0.2])
    # A feature exactly on a class center: cos = 1 must still give finite gradients.
    head = ArcFaceClsHead(num_classes=2, in_channels=2, easy_margin=True)
    with torch.no_grad():
        head.norm_product.weight.copy_(torch.eye(2))
    feat = torch.tensor([[2.0, 0.0]], requires_grad=True)
    head.loss((feat,), torch.tensor([0]))["loss"].backward()
    assert torch.isfinite(feat.grad).all()


def _retriever(**kw: Any) -> ImageToImageRetriever:
    torch.manual_seed(0)
    spec = {"backbone": {"type": "ResNet_CIFAR", "depth": 18, "in_channels": 1, "stem_channels": 4,
                         "base_channels": 4},
            "neck": {"type": "GlobalAveragePooling"}, "in_channels": 1, "mean": [127.5], "std": [127.5], **kw}
    from pretrain.assembly.assemble import build_from_spec

    return build_from_spec("model", {"type": "ImageToImageRetriever", **spec})


def test_retriever_embeds_ranks_and_trains_with_a_head() -> None:
    model = _retriever(head={"type": "ArcFaceClsHead", "num_classes": 3, "in_channels": 32}, topk=2).eval()
    images = torch.rand(6, 1, 8, 8) * 255
    feats = model.extract_feat(images)
    assert feats.shape == (6, 32) and torch.equal(model(images), feats)
    with pytest.raises(PretrainError, match="needs a gallery"):
        model.predict(images)
    gallery = torch.randn(7, 32)
    model.set_gallery(gallery, torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    out = model.predict(images)
    want = torch.nn.functional.cosine_similarity(feats[:, None], gallery[None], dim=-1).topk(2, dim=1)
    assert torch.equal(out["indices"], want.indices)
    torch.testing.assert_close(out["scores"], want.values)
    assert out["labels"].tolist() == torch.tensor([0, 1, 2, 0, 1, 2, 0])[want.indices[:, 0]].tolist()
    model.train()
    loss = model.loss(images, torch.tensor([0, 1, 2, 0, 1, 2]))["loss"]
    loss.backward()
    assert model.num_classes == 3 and torch.isfinite(loss)


def _digits_retriever_spec(**eval_: Any) -> dict[str, Any]:
    return {
        "model": {"type": "ImageToImageRetriever", "in_channels": 1, "mean": [127.5], "std": [127.5],
                  "backbone": {"type": "ResNet_CIFAR", "depth": 18, "in_channels": 1, "stem_channels": 4,
                               "base_channels": 4},
                  "neck": {"type": "GlobalAveragePooling"}},
        "data": {"batch_size": 8, "val": {"type": "Digits", "split": "val", "image_size": 8},
                 "gallery": {"type": "Digits", "split": "train", "image_size": 8}},
        "eval": eval_,
    }


def _issues(spec: dict[str, Any]) -> dict[str, str]:
    try:
        validated = validate_spec(spec)
    except SpecError as exc:
        return {i.loc: i.msg for i in exc.issues}
    return {i.loc: i.msg for i in check_model(validated).issues}


def test_bad_retrieval_inputs_are_clear_errors_before_any_work(tmp_path: Path) -> None:
    assert _issues(_digits_retriever_spec()) == {}
    spec = _digits_retriever_spec(topk=[0])
    assert "greater than 0" in _issues(spec)["eval.topk[0]"]
    spec = _digits_retriever_spec()
    spec["model"]["topk"] = 3
    assert _issues(spec) == {}
    spec["eval"] = {"topk": [1, 5]}
    assert "the retriever returns topk 3" in _issues(spec)["eval.topk"]
    spec = _digits_retriever_spec()
    spec["model"]["similarity"] = "cosine_similarity"  # MMPretrain's name
    assert "'cosine', 'dot' or 'euclidean'" in _issues(spec)["model.similarity"]
    spec = _digits_retriever_spec()
    del spec["data"]["gallery"]
    assert "the model is a retriever" in _issues(spec)["data.gallery"]
    spec = _digits_retriever_spec()
    spec["data"]["val"]["channels"], spec["data"]["gallery"]["channels"] = 1, 3
    assert "same channels" in _issues(spec)["data.gallery.channels"]
    spec = _digits_retriever_spec()
    spec["data"]["gallery"] = {"embeddings": str(tmp_path / "missing.safetensors")}
    assert "does not exist" in _issues(spec)["data.gallery.embeddings"]
    from pretrain.engine.embeddings import Embeddings, save_embeddings

    wrong = save_embeddings(tmp_path / "g.safetensors", Embeddings(torch.zeros(5, 16), torch.zeros(5).long(),
                                                                    ("a",)))
    spec["data"]["gallery"] = {"embeddings": str(wrong)}
    assert "holds 16-wide features" in _issues(spec)["data.gallery.embeddings"]
    spec["data"]["gallery"] = {"embeddings": str(wrong), "type": "Digits"}
    assert "not both" in _issues(spec)["data.gallery"]


def test_empty_gallery_is_a_clear_error(tmp_path: Path) -> None:
    from pretrain.engine.api import evaluate
    from pretrain.engine.embeddings import Embeddings, save_embeddings

    empty = save_embeddings(tmp_path / "e.safetensors", Embeddings(torch.zeros(0, 32), torch.zeros(0).long()))
    spec = _digits_retriever_spec()
    spec["data"]["gallery"] = {"embeddings": str(empty)}
    weights = tmp_path / "w.safetensors"
    from pretrain.engine import checkpoint as ckpt

    ckpt.save_tensors(weights, _retriever().state_dict(), {})
    with pytest.raises(PretrainError, match="empty gallery"):
        evaluate(spec, weights, device="cpu")
    folder = tmp_path / "nothing"
    folder.mkdir()
    spec["data"]["gallery"] = {"type": "ImageFolder", "root": str(folder), "labels": False}
    with pytest.raises(PretrainError, match="holds no images"):
        evaluate(spec, weights, device="cpu")


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)


def test_unlabelled_image_folder_reads_any_tree(tmp_path: Path) -> None:
    from pretrain_builtins.datasets.image_folder import ImageFolder

    for i, rel in enumerate(["a.png", "trip/b.png", "trip/day2/c.png", ".hidden/d.png"]):
        _png(tmp_path / rel, 10 * i)
    data = ImageFolder(root=str(tmp_path), labels=False, image_size=8)
    assert len(data) == 3 and data.classes == () and not data.labelled
    assert data.targets.tolist() == [-1, -1, -1]
    assert data.load_all()[0].shape == (3, 3, 8, 8)
    spec = {"model": {"type": "ImageClassifier", "in_channels": 1, "mean": [0.0], "std": [1.0],
                      "backbone": {"type": "ResNet_CIFAR", "depth": 18, "in_channels": 1, "stem_channels": 4,
                                   "base_channels": 4},
                      "neck": {"type": "GlobalAveragePooling"},
                      "head": {"type": "LinearClsHead", "num_classes": 10, "in_channels": 32}},
            "data": {"val": {"type": "ImageFolder", "root": str(tmp_path), "labels": False, "image_size": 8}}}
    weights = tmp_path / "w.safetensors"
    from pretrain.assembly.assemble import build_model
    from pretrain.engine import checkpoint as ckpt
    from pretrain.engine.api import evaluate

    ckpt.save_tensors(weights, build_model(spec).state_dict(), {})
    with pytest.raises(PretrainError, match="has no labels"):
        evaluate(spec, weights, device="cpu")
    spec["data"]["val"]["classes"] = ["x"]
    assert "labels = false reads no classes" in _issues(spec)["data.val.classes"]


def _inshop(root: Path) -> Path:
    """A tiny In-shop tree: items A (train), B and C (query + gallery)."""
    rows = [("img/A/1.jpg", "id_A", "train"), ("img/A/2.jpg", "id_A", "train"),
            ("img/B/1.jpg", "id_B", "gallery"), ("img/C/1.jpg", "id_C", "gallery"),
            ("img/B/2.jpg", "id_B", "gallery"), ("img/B/3.jpg", "id_B", "query"),
            ("img/C/2.jpg", "id_C", "query"), ("img/D/1.jpg", "id_D", "query")]
    (root / "Eval").mkdir(parents=True)
    lines = [str(len(rows)), "image_name item_id evaluation_status"] + [" ".join(r) for r in rows]
    (root / "Eval" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    for i, (name, _, _) in enumerate(rows):
        path = root / "Img" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10, 12), (20 * i, 0, 0)).save(path)
    return root


def test_inshop_splits_follow_mmpretrain(tmp_path: Path) -> None:
    from pretrain_builtins.datasets.inshop import InShop

    root = _inshop(tmp_path / "inshop")
    train = InShop(data_root=str(root), split="train")
    assert train.classes == ("id_A",) and train.targets.tolist() == [0, 0]
    gallery = InShop(data_root=str(root), split="gallery", image_size=8)
    assert not gallery.labelled and gallery.targets.tolist() == [-1, -1, -1]
    query = InShop(data_root=str(root), split="query")
    assert query.gallery_matches() == ((0, 2), (1,), ())  # B -> gallery 0 and 2; C -> 1; D -> none
    assert query.targets.tolist() == [0, 1, 2]
    assert gallery.load_all()[0].shape == (3, 3, 8, 8)
    with pytest.raises(PretrainError, match="annotation file"):
        InShop(data_root=str(tmp_path / "nowhere"))
