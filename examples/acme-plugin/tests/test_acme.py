"""pretrain-acme's own tests: the conformance kit on every component, plus their specifics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import pretrain
from pretrain.testing import parametrize_with_checks

HERE = Path(__file__).resolve().parents[1]


# [snippet kit]
@parametrize_with_checks(["AcmeResNetCIFAR", "GeMPooling", "MLPClsHead", "AcmeFocalLoss", "AcmeRotNet"])
def test_conformance(check):
    check()
# [/snippet]


def test_cifar_stem_keeps_resolution():
    from pretrain_acme.backbones import AcmeResNetCIFAR

    net = AcmeResNetCIFAR(depth=18, base_channels=8, out_indices=(0, 3))
    small, last = net(torch.randn(2, 3, 32, 32))
    assert small.shape == (2, 8, 32, 32) and last.shape == (2, 64, 4, 4)


def test_gem_pooling_limits():
    from pretrain_acme.necks import GeMPooling

    x = torch.rand(2, 3, 4, 4) + 0.1
    (avg,) = GeMPooling(p=1.0, learnable=False)((x,))
    torch.testing.assert_close(avg, x.mean((2, 3)))
    (near_max,) = GeMPooling(p=60.0, learnable=False)((x,))
    torch.testing.assert_close(near_max, x.amax((2, 3)), rtol=0.05, atol=0.0)


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    from pretrain_acme.losses import AcmeFocalLoss

    pred, target = torch.randn(6, 5), torch.randint(0, 5, (6,))
    torch.testing.assert_close(AcmeFocalLoss(gamma=0.0)(pred, target), F.cross_entropy(pred, target))
    # dense (one-hot) targets give the same value as class indices
    one_hot = F.one_hot(target, 5).float()
    torch.testing.assert_close(AcmeFocalLoss()(pred, one_hot), AcmeFocalLoss()(pred, target))


@pytest.mark.parametrize("spec", ["acme.toml", "rotnet.toml"])
def test_specs_build_and_run(spec):
    model = pretrain.build(HERE / spec, seed=0)
    out = model.loss(torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8), torch.arange(4))
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])


def test_rotnet_rejects_a_head_of_the_wrong_size():
    spec = pretrain.load_spec(HERE / "rotnet.toml", ["model.head.num_classes=10"])
    with pytest.raises(pretrain.PretrainError, match="num_classes = 4"):
        pretrain.build(spec)
