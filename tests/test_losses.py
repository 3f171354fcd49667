"""Loss utilities and built-in losses: MMPretrain's weight / reduction / avg_factor / loss_weight semantics."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import pretrain
from pretrain import SpecError
from pretrain.losses import reduce_loss, resolve_reduction, weight_reduce_loss, weighted_loss
from pretrain_builtins.losses.cross_entropy import CrossEntropyLoss
from pretrain_builtins.losses.label_smooth import LabelSmoothLoss
from pretrain_builtins.losses.regression import L1Loss, MSELoss

LOSS = torch.tensor([[1.0, 2.0], [3.0, 4.0]])


def _spec_issues(loss_spec):
    spec = {"model": {"type": "ImageClassifier", "backbone": {"type": "ResNet_CIFAR", "depth": 18},
                      "neck": {"type": "GlobalAveragePooling"},
                      "head": {"type": "LinearClsHead", "num_classes": 4, "in_channels": 512, "loss": loss_spec}}}
    with pytest.raises(SpecError) as info:
        pretrain.validate_spec(spec)
    return [str(i) for i in info.value.issues]


# ----------------------------------------------------------------------------- utilities


@pytest.mark.parametrize(
    ("reduction", "avg_factor", "expected"),
    [
        ("none", None, LOSS),
        ("mean", None, torch.tensor(2.5)),
        ("sum", None, torch.tensor(10.0)),
        ("mean", 4.0, torch.tensor(2.5)),  # sum / avg_factor
        ("mean", 2.0, torch.tensor(5.0)),
        ("none", 2.0, LOSS),  # unchanged
        ("sum", 2.0, torch.tensor(10.0)),  # MMPretrain raises ValueError; a sum needs no normaliser
    ],
)
def test_weight_reduce_loss_table(reduction, avg_factor, expected):
    assert torch.equal(weight_reduce_loss(LOSS, None, reduction, avg_factor), expected)


def test_weight_multiplies_before_reduction():
    weight = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert weight_reduce_loss(LOSS, weight, "sum").item() == 5.0
    assert weight_reduce_loss(LOSS, weight, "mean", avg_factor=1).item() == 5.0
    assert weight_reduce_loss(LOSS, weight, "mean").item() == 1.25  # mean over all 4 elements


def test_per_sample_weight_weights_rows_even_when_n_equals_c():
    # MMPretrain multiplies (2,) into (2, 2) column-wise here; we weight the samples.
    out = weight_reduce_loss(LOSS, torch.tensor([1.0, 0.0]), "none")
    assert torch.equal(out, torch.tensor([[1.0, 2.0], [0.0, 0.0]]))


def test_unknown_reduction_is_rejected():
    with pytest.raises(ValueError, match="none, mean, sum"):
        weight_reduce_loss(LOSS, None, "avg")
    with pytest.raises(ValueError):
        reduce_loss(LOSS, "max")
    with pytest.raises(ValueError):
        resolve_reduction("mean", "median")
    assert resolve_reduction("mean", None) == "mean" and resolve_reduction("mean", "sum") == "sum"


def test_weighted_loss_decorator_signature_and_kwargs():
    @weighted_loss
    def scaled_l1(pred, target, scale=1.0):
        return (pred - target).abs() * scale

    pred, target = torch.tensor([0.0, 2.0, 3.0]), torch.ones(3)
    assert scaled_l1.__name__ == "scaled_l1"
    assert scaled_l1(pred, target).item() == pytest.approx(4 / 3)
    assert scaled_l1(pred, target, reduction="sum", scale=2.0).item() == 8.0
    assert scaled_l1(pred, target, torch.tensor([1.0, 0.0, 0.0]), avg_factor=0.5).item() == 2.0
    assert scaled_l1(pred, target, reduction="none").shape == (3,)


# ----------------------------------------------------------------------------- CrossEntropyLoss

torch.manual_seed(0)
LOGITS = torch.randn(6, 4)
LABELS = torch.tensor([0, 1, 2, 3, 1, 0])
ONE_HOT = F.one_hot(LABELS, 4).float()


def test_ce_index_targets_match_torch_and_scale_by_loss_weight():
    assert torch.allclose(CrossEntropyLoss()(LOGITS, LABELS), F.cross_entropy(LOGITS, LABELS))
    assert torch.allclose(CrossEntropyLoss(loss_weight=2.5)(LOGITS, LABELS), 2.5 * F.cross_entropy(LOGITS, LABELS))


def test_ce_soft_targets_are_detected():
    soft = torch.softmax(torch.randn(6, 4), dim=1)
    expected = -(soft * torch.log_softmax(LOGITS, dim=1)).sum(1).mean()
    assert torch.allclose(CrossEntropyLoss()(LOGITS, soft), expected)
    assert torch.allclose(CrossEntropyLoss()(LOGITS, ONE_HOT), CrossEntropyLoss()(LOGITS, LABELS))


def test_ce_class_weight_pos_weight_and_smoothing_follow_torch():
    cw = [1.0, 2.0, 0.5, 1.0]
    per_sample = F.cross_entropy(LOGITS, LABELS, weight=torch.tensor(cw), reduction="none")
    # MMPretrain semantics: per-sample losses, then mean over N (not torch's weighted mean)
    assert torch.allclose(CrossEntropyLoss(class_weight=cw)(LOGITS, LABELS), per_sample.mean())
    smooth = CrossEntropyLoss(label_smoothing=0.1)(LOGITS, LABELS)
    assert torch.allclose(smooth, F.cross_entropy(LOGITS, LABELS, label_smoothing=0.1))
    pw = [1.0, 3.0, 1.0, 1.0]
    sig = CrossEntropyLoss(use_sigmoid=True, pos_weight=pw)(LOGITS, ONE_HOT)
    assert torch.allclose(sig, F.binary_cross_entropy_with_logits(LOGITS, ONE_HOT, pos_weight=torch.tensor(pw)))


def test_ce_sigmoid_accepts_index_targets():
    loss = CrossEntropyLoss(use_sigmoid=True)
    assert torch.allclose(loss(LOGITS, LABELS), loss(LOGITS, ONE_HOT))


def test_ce_avg_factor_reduction_override_and_sample_weight():
    loss = CrossEntropyLoss()
    per_sample = F.cross_entropy(LOGITS, LABELS, reduction="none")
    assert torch.allclose(loss(LOGITS, LABELS, avg_factor=3), per_sample.sum() / 3)
    assert torch.allclose(loss(LOGITS, LABELS, reduction_override="none"), per_sample)
    w = torch.tensor([1.0, 0, 0, 0, 0, 2.0])
    assert torch.allclose(loss(LOGITS, LABELS, weight=w, reduction_override="sum"), (per_sample * w).sum())
    # sigmoid: avg_factor=N divides the sum over N*C elements by N (MMPretrain semantics)
    bce = F.binary_cross_entropy_with_logits(LOGITS, ONE_HOT, reduction="sum") / 6
    assert torch.allclose(CrossEntropyLoss(use_sigmoid=True)(LOGITS, LABELS, avg_factor=6), bce)


def test_ce_sum_with_avg_factor_does_not_crash():
    loss = CrossEntropyLoss(reduction="sum")
    assert torch.allclose(loss(LOGITS, LABELS, avg_factor=6), F.cross_entropy(LOGITS, LABELS, reduction="sum"))


def test_ce_rejects_malformed_targets_and_weights():
    with pytest.raises(ValueError, match="fits neither class indices"):
        CrossEntropyLoss()(LOGITS, LABELS.float())
    with pytest.raises(ValueError, match="fits neither"):
        CrossEntropyLoss()(LOGITS, torch.zeros(6, 3))
    with pytest.raises(ValueError, match="class_weight has 3 entries"):
        CrossEntropyLoss(class_weight=[1.0, 1.0, 1.0])(LOGITS, LABELS)
    with pytest.raises(ValueError, match="pos_weight"):
        CrossEntropyLoss(pos_weight=[1.0] * 4)


def test_ce_cross_field_checks_are_validation_errors():
    issues = _spec_issues({"type": "CrossEntropyLoss", "pos_weight": [1.0, 1.0, 1.0, 1.0]})
    assert any(i.startswith("model.head.loss.pos_weight: only applies with use_sigmoid") for i in issues)
    assert any(i.startswith("model.head.loss.reduction") for i in _spec_issues({"type": "CrossEntropyLoss", "reduction": "avg"}))
    issues = _spec_issues({"type": "CrossEntropyLoss", "use_sigmoid": True, "label_smoothing": 0.1})
    assert any("model.head.loss.label_smoothing" in i and "multi_label" in i for i in issues)


def test_class_weight_follows_the_module_device_but_is_not_saved():
    loss = CrossEntropyLoss(class_weight=[1.0, 2.0], pos_weight=None)
    assert loss.state_dict() == {}
    assert loss.double().class_weight.dtype == torch.float64


# ----------------------------------------------------------------------------- LabelSmoothLoss


def test_label_smooth_original_equals_torch_label_smoothing():
    loss = LabelSmoothLoss(label_smooth_val=0.1)
    assert torch.allclose(loss(LOGITS, LABELS), F.cross_entropy(LOGITS, LABELS, label_smoothing=0.1))


def test_label_smooth_modes():
    eps, k = 0.2, 4
    original = ONE_HOT * (1 - eps) + eps / k
    assert torch.allclose(LabelSmoothLoss(label_smooth_val=eps).smooth(ONE_HOT), original)
    classy = LabelSmoothLoss(label_smooth_val=eps, mode="classy_vision")
    e2 = eps / (1 + eps)
    assert torch.allclose(classy.smooth(ONE_HOT), ONE_HOT * (1 - e2) + e2 / k)
    multi = LabelSmoothLoss(label_smooth_val=eps, mode="multi_label")
    assert multi.use_sigmoid and torch.allclose(multi.smooth(ONE_HOT), ONE_HOT * (1 - 2 * eps) + eps)
    expected = F.binary_cross_entropy_with_logits(LOGITS, ONE_HOT * (1 - 2 * eps) + eps, reduction="sum") / 6
    assert torch.allclose(multi(LOGITS, LABELS, avg_factor=6), expected)


def test_label_smooth_accepts_int_zero_column_indices_and_soft_targets():
    zero = LabelSmoothLoss(label_smooth_val=0, loss_weight=3.0)
    assert torch.allclose(zero(LOGITS, LABELS[:, None]), 3 * F.cross_entropy(LOGITS, LABELS))
    soft = torch.softmax(torch.randn(6, 4), 1)
    assert torch.allclose(LabelSmoothLoss(label_smooth_val=0.1)(LOGITS, soft), CrossEntropyLoss()(LOGITS, soft * 0.9 + 0.025))


def test_label_smooth_checks():
    with pytest.raises(ValueError, match="num_classes is 5"):
        LabelSmoothLoss(label_smooth_val=0.1, num_classes=5)(LOGITS, LABELS)
    loss = LabelSmoothLoss(label_smooth_val=0.1)
    loss(LOGITS, LABELS)
    loss(torch.randn(2, 7), torch.tensor([1, 6]))  # no num_classes written back from the first batch
    with pytest.raises(ValueError):
        LabelSmoothLoss(label_smooth_val=1.0)
    with pytest.warns(UserWarning, match="use_sigmoid=True"):
        LabelSmoothLoss(label_smooth_val=0.1, mode="multi_label", use_sigmoid=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LabelSmoothLoss(label_smooth_val=0.1, mode="multi_label")
    issues = _spec_issues({"type": "LabelSmoothLoss", "label_smooth_val": 1.5, "pos_weight": [1.0] * 4})
    assert any(i.startswith("model.head.loss.label_smooth_val") for i in issues)


# ----------------------------------------------------------------------------- regression


def test_l1_and_mse_values_and_kind():
    pred, target = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.0, 1.0]])
    assert L1Loss()(pred, target).item() == 1.5 and MSELoss()(pred, target).item() == 2.5
    assert L1Loss(reduction="sum", loss_weight=2)(pred, target).item() == 6.0
    assert MSELoss()(pred, target, avg_factor=1).item() == 5.0
    assert L1Loss()(pred, target, weight=torch.tensor([[0.0, 1.0]]), reduction_override="sum").item() == 2.0
    assert L1Loss.target_kind == "dense" and MSELoss.target_kind == "dense"


def test_regression_rejects_index_targets():
    with pytest.raises(ValueError, match="one-hot encoded first"):
        L1Loss()(LOGITS, LABELS)
