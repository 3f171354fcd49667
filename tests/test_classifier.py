"""ImageClassifier (preprocessing, forward/loss/predict/extract_feat) and the Mixup/CutMix batch augments."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pretrain
from pretrain import PretrainError, SpecError
from pretrain.components import BaseLoss
from pretrain_builtins.heads.cls_head import ClsHead, LinearClsHead
from pretrain_builtins.models.batch_augments import CutMix, Mixup, sample_beta
from pretrain_builtins.models.classifier import ImageClassifier
from pretrain_builtins.necks.gap import GlobalAveragePooling

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


class TinyBackbone(nn.Module):
    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)

    def forward(self, x):
        return (self.conv(x),)


def tiny(**kw):
    kw.setdefault("head", LinearClsHead(num_classes=5, in_channels=8))
    return ImageClassifier(backbone=TinyBackbone(kw.get("in_channels", 3)), neck=GlobalAveragePooling(), **kw)


def cifar_spec(**model):
    return {"model": {"type": "ImageClassifier", "backbone": {"type": "ResNet_CIFAR", "depth": 18},
                      "neck": {"type": "GlobalAveragePooling"},
                      "head": {"type": "LinearClsHead", "num_classes": 10, "in_channels": 512}, **model}}


def issues(spec):
    with pytest.raises(SpecError) as info:
        pretrain.validate_spec(spec)
    return [str(i) for i in info.value.issues]


# ----------------------------------------------------------------------------- preprocessing


def test_normalisation_matches_imagenet_defaults_and_uint8_equals_float():
    model = tiny()
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    expected = (images.float() - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(model.preprocess(images), expected)
    assert torch.equal(model.preprocess(images), model.preprocess(images.float()))
    assert model.state_dict().keys() == {"backbone.conv.weight", "backbone.conv.bias", "head.fc.weight", "head.fc.bias"}


def test_to_rgb_flips_and_none_skips_normalisation():
    images = torch.rand(2, 3, 4, 4) * 255
    model = tiny(to_rgb=True, mean=None, std=None)
    assert torch.equal(model.preprocess(images), images.flip(1))


def test_grey_batches_are_repeated_other_mismatches_fail():
    model = tiny()
    grey = torch.rand(2, 1, 4, 4) * 255
    assert torch.allclose(model.preprocess(grey), model.preprocess(grey.expand(-1, 3, -1, -1)))
    with pytest.raises(PretrainError, match="takes 3-channel images, got 4 channels"):
        model.preprocess(torch.rand(2, 4, 4, 4))
    with pytest.raises(PretrainError, match=r"\(N, C, H, W\)"):
        model.preprocess(torch.rand(3, 4, 4))
    one = tiny(in_channels=1, mean=[127.5], std=[127.5])
    assert one(grey).shape == (2, 5)
    with pytest.raises(PretrainError, match="takes 1-channel images, got 3"):
        one(torch.rand(2, 3, 4, 4))


def test_preprocessing_spec_errors():
    found = issues(cifar_spec(to_rgb=True, in_channels=1, mean=[1.0, 2.0], std=[1.0, -1.0]))
    assert "model.to_rgb: reverses 3 colour channels, but in_channels is 1" in found
    assert any(i.startswith("model.mean: has 2 values but in_channels is 1") for i in found)
    assert "model.std: every value must be positive" in found
    assert "model.std: give both mean and std, or neither" in issues(cifar_spec(std=None))


# ----------------------------------------------------------------------------- contract


def test_reference_parameter_count_and_outputs():
    model = pretrain.build_model(cifar_spec(), seed=0).eval()
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    logits = model(images)
    assert logits.shape == (2, 10)
    pred = model.predict(images)
    assert torch.allclose(pred["scores"], logits.softmax(1), atol=1e-6)
    assert torch.equal(pred["labels"], logits.argmax(1)) and pred["labels"].dtype == torch.long
    assert model.extract_feat(images, stage="backbone")[0].shape == (2, 512, 4, 4)
    assert model.extract_feat(images)[0].shape == (2, 512)  # default "neck", like MMPretrain
    assert model.extract_feat(images, stage="pre_logits").shape == (2, 512)
    out = model.loss(images, torch.tensor([3, 7]))
    assert set(out) == {"loss"} and out["loss"].ndim == 0


def test_without_head_forward_returns_features():
    model = ImageClassifier(backbone=TinyBackbone())
    feats = model(torch.rand(2, 3, 4, 4))
    assert isinstance(feats, tuple) and feats[0].shape == (2, 8, 4, 4)
    with pytest.raises(PretrainError, match="needs a head"):
        model.loss(torch.rand(2, 3, 4, 4), torch.tensor([0, 1]))
    with pytest.raises(PretrainError, match="pre_logits"):
        model.extract_feat(torch.rand(2, 3, 4, 4), stage="pre_logits")


@pytest.mark.slow
def test_seed_tutorial_l1_config_trains():
    """ResNet_CIFAR + GAP + LinearClsHead + L1Loss (the guide's final config): the loss falls."""
    spec = cifar_spec()
    spec["model"]["head"]["loss"] = {"type": "L1Loss"}
    model = pretrain.build_model(spec, seed=0).train()
    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    losses = []
    for _ in range(5):
        loss = model.loss(images, labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


# ----------------------------------------------------------------------------- batch augments


def test_mixup_mixes_inputs_and_targets_with_the_same_lambda():
    x, y = torch.rand(6, 3, 4, 4), F.one_hot(torch.arange(6), 6).float()
    torch.manual_seed(3)
    mixed_x, mixed_y = Mixup(alpha=1)(x, y)  # an int alpha is fine
    torch.manual_seed(3)  # replay the draws: lambda, then the permutation
    lam, perm = sample_beta(1.0), torch.randperm(6)
    assert 0 < lam < 1 and not torch.equal(perm, torch.arange(6))
    assert torch.allclose(mixed_x, lam * x + (1 - lam) * x[perm])
    assert torch.allclose(mixed_y, lam * y + (1 - lam) * y[perm])
    assert torch.allclose(mixed_y.sum(1), torch.ones(6))


def test_cutmix_pastes_a_box_and_mixes_targets_by_area():
    torch.manual_seed(1)
    x, y = torch.rand(4, 3, 8, 8), F.one_hot(torch.arange(4), 4).float()
    before = x.clone()
    mixed_x, mixed_y = CutMix(alpha=1.0)(x, y)
    assert torch.equal(x, before)  # not modified in place (MMPretrain writes into the batch)
    changed = (mixed_x != x).any(1).float().mean((1, 2))  # fraction of pixels replaced, per image
    kept = mixed_y.diagonal()
    moved = changed > 0
    assert torch.allclose(kept[moved], 1 - changed[moved], atol=1e-6)
    assert torch.allclose(mixed_y.sum(1), torch.ones(4))
    fixed = CutMix(alpha=1.0, cutmix_minmax=(0.25, 0.5))
    (y1, y2, x1, x2), lam = fixed.box(8, 8, 0.5)
    assert 2 <= y2 - y1 < 4 and 2 <= x2 - x1 < 4 and lam == 1 - (y2 - y1) * (x2 - x1) / 64
    with pytest.raises(ValueError, match="0 < min < max <= 1"):
        CutMix(alpha=1.0, cutmix_minmax=(0.5, 0.2))


def test_batch_augments_are_seeded_by_torch():
    x, y = torch.rand(4, 3, 8, 8), F.one_hot(torch.arange(4), 4).float()

    def run(seed):
        torch.manual_seed(seed)
        return CutMix(alpha=0.5)(x, y)[1]

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


def test_classifier_uses_batch_augments_only_in_training():
    model = tiny(batch_augments=[Mixup(alpha=0.5)], head=LinearClsHead(num_classes=5, in_channels=8, loss={"type": "L1Loss"}))
    assert model.produces_dense_targets and model.num_classes == 5
    seen = []
    original = model.head.loss

    def spy(feats, targets):
        seen.append(targets)
        return original(feats, targets)

    model.head.loss = spy
    images, labels = torch.rand(4, 3, 4, 4) * 255, torch.tensor([0, 1, 2, 3])
    model.train().loss(images, labels)
    model.eval().loss(images, labels)
    assert seen[0].shape == (4, 5) and seen[0].is_floating_point()  # one-hot, then mixed
    assert torch.equal(seen[1], labels)


def test_augment_probs_remainder_means_no_augment():
    model = tiny(batch_augments=[Mixup(alpha=1.0)], augment_probs=[0.0])
    images, labels = torch.rand(4, 3, 4, 4), torch.tensor([0, 1, 2, 3])
    _, y = model._augment(model.preprocess(images), model._one_hot(labels))
    assert torch.equal(y, F.one_hot(labels, 5).float())


def test_batch_augment_configuration_errors():
    with pytest.raises(ValueError, match="set num_classes on the batch augment"):
        ImageClassifier(backbone=TinyBackbone(), head=ClsHead(), batch_augments=[Mixup(alpha=1.0)])
    model = ImageClassifier(backbone=TinyBackbone(), head=ClsHead(), batch_augments=[Mixup(alpha=1.0, num_classes=8)])
    assert model.num_classes == 8
    with pytest.raises(ValueError, match="num_classes disagrees"):
        tiny(batch_augments=[Mixup(alpha=1.0, num_classes=8)])
    found = issues(cifar_spec(batch_augments=[{"type": "Mixup", "alpha": 0.8}, {"type": "CutMix", "alpha": 1}],
                              augment_probs=[0.7, 0.6]))
    assert found == ["model.augment_probs: must sum to at most 1 (the rest is 'no augment'), got 1.3"]
    assert any("alpha" in i for i in issues(cifar_spec(batch_augments=[{"type": "Mixup", "alpha": 0}])))


class IndexOnlyLoss(BaseLoss):
    """Cross-entropy that only takes class indices.

    Args:
        loss_weight: Scale.
    """

    target_kind = "index"

    def __init__(self, *, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        return self.loss_weight * F.cross_entropy(pred, target)


def test_batch_augments_with_an_index_only_loss_fail_validation(registry):
    from pretrain.engine.preflight import check_model

    registry.register("loss", "IndexOnlyLoss", IndexOnlyLoss)
    spec = cifar_spec(batch_augments=[{"type": "Mixup", "alpha": 0.8}])
    spec["model"]["head"]["loss"] = {"type": "IndexOnlyLoss"}
    report = check_model(pretrain.validate_spec(copy.deepcopy(spec)), input_size=(32, 32))
    (issue,) = report.issues
    assert issue.loc == "model.head.loss"
    assert "IndexOnlyLoss expects index targets" in issue.msg and "model has batch augments" in issue.msg
    spec["model"]["batch_augments"] = []
    assert check_model(pretrain.validate_spec(spec), input_size=(32, 32)).issues == []
