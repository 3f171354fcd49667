"""Necks (GAP, LinearNeck, NonLinearNeck) and classification heads (ClsHead, LinearClsHead, StackedLinearClsHead)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import pretrain
from pretrain import SpecError
from pretrain.assembly.assemble import build_from_spec
from pretrain_builtins.heads._common import classification_loss, targets_for_loss, topk_accuracy
from pretrain_builtins.heads.cls_head import ClsHead, LinearClsHead, StackedLinearClsHead
from pretrain_builtins.layers import GlobalBatchNorm1d
from pretrain_builtins.losses.cross_entropy import CrossEntropyLoss
from pretrain_builtins.losses.regression import L1Loss
from pretrain_builtins.necks.gap import GlobalAveragePooling
from pretrain_builtins.necks.linear_neck import LinearNeck
from pretrain_builtins.necks.nonlinear_neck import NonLinearNeck


def _issues(kind, spec):
    with pytest.raises(SpecError) as info:
        build_from_spec(kind, spec)
    return [str(i) for i in info.value.issues]


# ----------------------------------------------------------------------------- necks


@pytest.mark.parametrize(("dim", "shape"), [(1, (2, 5, 7)), (2, (2, 5, 3, 4)), (3, (2, 5, 2, 3, 4))])
def test_gap_pools_tuples_and_tensors(dim, shape):
    gap = GlobalAveragePooling(dim=dim)
    x = torch.randn(shape)
    expected = x.flatten(2).mean(-1)
    out = gap((x, x * 2))
    assert isinstance(out, tuple) and len(out) == 2
    assert torch.allclose(out[0], expected, atol=1e-6) and torch.allclose(out[1], 2 * expected, atol=1e-5)
    single = gap(x)
    assert isinstance(single, torch.Tensor) and torch.allclose(single, expected, atol=1e-6)


def test_gap_rejects_wrong_rank_and_types():
    with pytest.raises(ValueError, match=r"expects inputs with 4 dims \(N, C, H, W\), got shape \(2, 5\)"):
        GlobalAveragePooling()(torch.randn(2, 5))
    with pytest.raises(TypeError):
        GlobalAveragePooling()({"x": torch.randn(2, 5, 3, 3)})
    assert any("model.neck.dim" in i or i.startswith("neck.dim") for i in _issues("neck", {"type": "GlobalAveragePooling", "dim": 4}))


def test_linear_neck():
    neck = LinearNeck(in_channels=6, out_channels=3, gap_dim=2, act="ReLU")
    neck.train()
    (out,) = neck((torch.randn(2, 4, 5, 5), torch.randn(4, 6, 2, 2)))  # only the last feature is used
    assert out.shape == (4, 3) and torch.all(out >= 0)
    plain = LinearNeck(in_channels=6, out_channels=3, norm=None)
    x = torch.randn(4, 6)
    assert torch.allclose(plain((x,))[0], plain.fc(x))


def test_nonlinear_neck_structure_matches_mmpretrain_names():
    neck = NonLinearNeck(in_channels=8, hid_channels=16, out_channels=4, num_layers=3, with_last_bn_affine=False)
    keys = set(neck.state_dict())
    assert {"fc0.weight", "bn0.weight", "fc1.weight", "bn1.weight", "fc2.weight", "bn2.running_mean"} <= keys
    assert "bn2.weight" not in keys and "fc0.bias" not in keys and "fc2.bias" not in keys
    (out,) = neck((torch.randn(4, 8, 3, 3),))
    assert out.shape == (4, 4)
    no_bn = NonLinearNeck(in_channels=8, hid_channels=16, out_channels=4, with_last_bn=False, with_avg_pool=False)
    assert "bn1.weight" not in no_bn.state_dict() and no_bn((torch.randn(4, 8),))[0].shape == (4, 4)
    assert any("num_layers" in i for i in _issues("neck", {"type": "NonLinearNeck", "in_channels": 8, "hid_channels": 8,
                                                          "out_channels": 8, "num_layers": 1}))


def test_nonlinear_neck_default_init_sets_norm_weights_to_one():
    neck = build_from_spec("neck", {"type": "NonLinearNeck", "in_channels": 8, "hid_channels": 16, "out_channels": 4, "norm": "LN"})
    assert torch.all(neck.bn0.weight == 1)
    bn = build_from_spec("neck", {"type": "NonLinearNeck", "in_channels": 8, "hid_channels": 16, "out_channels": 4})
    assert isinstance(bn.bn0, nn.BatchNorm1d) and torch.all(bn.bn1.weight == 1)


def test_syncbn_runs_locally_on_cpu_even_inside_a_process_group(tmp_path):
    neck = NonLinearNeck(in_channels=8, hid_channels=16, out_channels=4, norm="SyncBN")
    assert isinstance(neck.bn0, GlobalBatchNorm1d) and not isinstance(neck.bn0, nn.SyncBatchNorm)
    x = (torch.randn(4, 8, 2, 2),)
    neck.train()
    out_single = neck(x)[0]  # no process group
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="expected input tensor to be on GPU"):
            nn.SyncBatchNorm(16).train()(torch.randn(4, 16))  # what torch does on CPU
        out_group = neck(x)[0]
    finally:
        dist.destroy_process_group()
    assert out_single.shape == out_group.shape == (4, 4)


# ----------------------------------------------------------------------------- helpers


def test_topk_accuracy_percent_and_dense_targets():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = torch.tensor([1, 1, 0, 0])
    acc = topk_accuracy(scores, labels, (1, 2))
    assert acc["accuracy/top1"].item() == 50.0 and acc["accuracy/top2"].item() == 75.0
    mixed = F.one_hot(labels, 3).float() * 0.7 + 0.1  # Mixup-style: argmax is the label
    assert topk_accuracy(scores, mixed, (1,))["accuracy/top1"].item() == 50.0
    with pytest.raises(ValueError, match="needs at least 5 classes"):
        topk_accuracy(scores, labels, (5,))


def test_targets_for_loss_follows_target_kind():
    scores, labels = torch.randn(3, 4), torch.tensor([0, 3, 1])
    assert torch.equal(targets_for_loss(L1Loss(), scores, labels), F.one_hot(labels, 4).float())
    assert targets_for_loss(CrossEntropyLoss(), scores, labels) is labels

    class IndexOnly(nn.Module):
        target_kind = "index"

    with pytest.raises(ValueError, match="Mixup/CutMix"):
        targets_for_loss(IndexOnly(), scores, torch.rand(3, 4))


# ----------------------------------------------------------------------------- heads


def test_cls_head_uses_features_as_logits():
    head = ClsHead(cal_acc=True, topk=(1, 2))
    feats = torch.randn(5, 3)
    assert torch.equal(head((torch.randn(5, 9), feats)), feats)
    assert torch.equal(head(feats), feats)  # a bare tensor is not indexed as a tuple
    out = head.loss((feats,), torch.tensor([0, 1, 2, 0, 1]))
    assert set(out) == {"loss", "accuracy/top1", "accuracy/top2"}
    assert torch.allclose(out["loss"], F.cross_entropy(feats, torch.tensor([0, 1, 2, 0, 1])))
    assert torch.allclose(head.predict((feats,)).sum(1), torch.ones(5))


def test_linear_head_default_init_and_shapes():
    head = build_from_spec("head", {"type": "LinearClsHead", "num_classes": 300, "in_channels": 200})
    assert isinstance(head.fc, nn.Linear) and head.fc.weight.shape == (300, 200)
    assert abs(head.fc.weight.std().item() - 0.01) < 0.001 and torch.all(head.fc.bias == 0)
    assert head((torch.randn(2, 200),)).shape == (2, 300)


def test_head_validation_errors():
    assert any("num_classes" in i for i in _issues("head", {"type": "LinearClsHead", "num_classes": 0, "in_channels": 4}))
    (issue,) = _issues("head", {"type": "LinearClsHead", "num_classes": 3, "in_channels": 4, "topk": [1, 5]})
    assert issue.startswith("head.topk: top-5 accuracy needs at least 5 classes but num_classes is 3")
    assert any("mid_channels" in i for i in _issues("head", {"type": "StackedLinearClsHead", "num_classes": 3,
                                                             "in_channels": 4, "mid_channels": []}))
    with pytest.raises(ValueError):
        LinearClsHead(num_classes=0, in_channels=4)
    with pytest.raises(ValueError):
        LinearClsHead(num_classes=3, in_channels=4, topk=5)


def test_sum_reduction_under_a_head_that_passes_avg_factor():
    head = LinearClsHead(num_classes=4, in_channels=6, loss={"type": "CrossEntropyLoss", "reduction": "sum"})
    feats, labels = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 0])
    loss = head.loss((feats,), labels)["loss"]
    assert torch.allclose(loss, F.cross_entropy(head.fc(feats), labels, reduction="sum"))


def test_dense_loss_gets_one_hot_targets_from_the_head():
    head = LinearClsHead(num_classes=4, in_channels=6, loss={"type": "L1Loss"}, cal_acc=True)
    feats, labels = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 0])
    out = head.loss((feats,), labels)
    expected = (head.fc(feats) - F.one_hot(labels, 4)).abs().sum() / 5  # avg_factor = N
    assert torch.allclose(out["loss"], expected) and "accuracy/top1" in out


def test_tutorial_linear_head_with_l1_loss_trains():
    """The guide's LinearClsHead + L1Loss fails its own assert in MMPretrain; here the loss falls."""
    torch.manual_seed(0)
    head = build_from_spec("head", {"type": "LinearClsHead", "num_classes": 10, "in_channels": 32, "loss": {"type": "L1Loss"}})
    feats, labels = torch.randn(64, 32), torch.randint(0, 10, (64,))
    opt = torch.optim.SGD(head.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        loss = head.loss((feats,), labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_classification_loss_helper_is_reusable():
    out = classification_loss(CrossEntropyLoss(loss_weight=2.0), torch.randn(3, 4), torch.tensor([0, 1, 2]), cal_acc=True)
    assert set(out) == {"loss", "accuracy/top1"}


def test_stacked_head():
    head = StackedLinearClsHead(num_classes=3, in_channels=8, mid_channels=[16, 12], dropout_rate=0.5, norm="BN1d", act="GELU")
    assert len(head.layers) == 3 and head.fc is head.layers[-1] and head.fc.fc.out_features == 3
    assert head.layers[0].norm is not None and head.fc.norm is None and head.fc.dropout is None
    head.eval()
    feats = (torch.randn(4, 8),)
    assert head.pre_logits(feats).shape == (4, 12) and head(feats).shape == (4, 3)
    # `fc` is a property; an init override can still target it
    built = build_from_spec("head", {"type": "StackedLinearClsHead", "num_classes": 3, "in_channels": 8, "mid_channels": [4],
                                     "init": [{"type": "Constant", "val": 0.25, "override": "fc"}]})
    assert torch.all(built.fc.fc.weight == 0.25) and not torch.all(built.layers[0].fc.weight == 0.25)


def test_heads_are_registered_with_documented_fields():
    reg = pretrain.get_registry()
    for name in ("ClsHead", "LinearClsHead", "StackedLinearClsHead"):
        assert reg.get("head", name).__name__ == name
    for name in ("GlobalAveragePooling", "LinearNeck", "NonLinearNeck"):
        assert reg.get("neck", name).__name__ == name
