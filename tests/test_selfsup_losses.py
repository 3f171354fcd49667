"""Contrastive and siamese heads/losses/algorithms equal direct formula implementations (1e-6)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from pretrain import build_model
from pretrain.components import build_component
from pretrain.errors import PretrainError, SpecError

TINY_VIT: dict[str, Any] = {"type": "VisionTransformer", "img_size": 8, "patch_size": 4, "in_channels": 1,
                            "arch": {"embed_dims": 16, "num_layers": 1, "num_heads": 2, "feedforward_channels": 32}}
NORM = {"mean": [127.5], "std": [127.5]}


def _views(n: int = 6, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n, 1, 8, 8), generator=g).float() for _ in range(2)]


def _nonlinear(cin: int, hid: int, out: int, **kw: Any) -> dict[str, Any]:
    return {"type": "NonLinearNeck", "in_channels": cin, "hid_channels": hid, "out_channels": out, **kw}


# ----------------------------------------------------------------------------- losses and heads


def test_contrastive_head_is_infonce():
    torch.manual_seed(0)
    pos, neg = torch.rand(5, 1) * 2 - 1, torch.rand(5, 7) * 2 - 1
    head = build_component("head", {"type": "ContrastiveHead", "temperature": 0.2})
    got = head.loss(pos, neg)["loss"]
    p, n = pos.double() / 0.2, neg.double() / 0.2
    direct = sum(-p[i, 0] + math.log(math.exp(p[i, 0]) + sum(math.exp(v) for v in n[i])) for i in range(5)) / 5
    assert abs(float(got.detach()) - float(direct)) < 1e-6
    probs = head.predict(pos, neg)
    assert probs.shape == (5, 8) and torch.allclose(probs.sum(1), torch.ones(5))


def test_cosine_similarity_loss_is_negative_cosine():
    torch.manual_seed(0)
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    loss = build_component("loss", {"type": "CosineSimilarityLoss"})
    direct = -sum(float(a[i] @ b[i]) / (float(a[i].norm()) * float(b[i].norm())) for i in range(4)) / 4
    assert abs(float(loss(a, b)) - direct) < 1e-6
    shifted = build_component("loss", {"type": "CosineSimilarityLoss", "shift_factor": 2.0, "scale_factor": 2.0})
    assert abs(float(shifted(a, b)) - (2 + 2 * direct)) < 1e-6  # BYOL's 2 - 2cos
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0])  # MMPretrain's `mask`: weight + avg_factor
    per = [-(float(a[i] @ b[i]) / (float(a[i].norm()) * float(b[i].norm()))) for i in range(4)]
    masked = loss(a, b, weight=mask, avg_factor=float(mask.sum()))
    assert abs(float(masked) - (per[0] + per[2] + per[3]) / 3) < 1e-6


def test_cross_correlation_loss_is_barlow_twins():
    torch.manual_seed(0)
    c = torch.randn(6, 6).tanh()
    loss = build_component("loss", {"type": "CrossCorrelationLoss", "lambd": 0.01})
    on = sum((1 - float(c[i, i])) ** 2 for i in range(6))
    off = sum(float(c[i, j]) ** 2 for i in range(6) for j in range(6) if i != j)
    assert abs(float(loss(c)) - (on + 0.01 * off)) < 1e-6
    before = c.clone()
    loss(c)
    assert torch.equal(c, before)  # MMPretrain's version writes into the matrix


def test_cross_correlation_head_normalises_each_view_over_the_batch():
    torch.manual_seed(0)
    z1, z2 = torch.randn(10, 4) * 3 + 1, torch.randn(10, 4) * 0.5 - 2
    head = build_component("head", {"type": "LatentCrossCorrelationHead", "in_channels": 4})
    head.train()
    got = head.loss(z1, z2)["loss"]
    bn = lambda z: (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)  # noqa: E731
    c = bn(z1.double()).T @ bn(z2.double()) / 10
    on = ((torch.diagonal(c) - 1) ** 2).sum()
    off = (c**2).sum() - (torch.diagonal(c) ** 2).sum()
    assert abs(float(got.detach()) - float(on + 0.0051 * off)) < 1e-6


def test_mocov3_head_is_in_batch_infonce_with_loss_weight():
    torch.manual_seed(0)
    head = build_component("head", {
        "type": "MoCoV3Head", "temperature": 0.2, "loss": {"type": "CrossEntropyLoss", "loss_weight": 0.4},
        "predictor": _nonlinear(4, 8, 4, with_avg_pool=False, with_last_bn_affine=False),
    })
    q, k = torch.randn(5, 4), torch.randn(5, 4)
    got = head.loss(q, k)["loss"]
    pred = F.normalize(head.predictor((q,))[0].double(), dim=1)
    logits = pred @ F.normalize(k.double(), dim=1).T / 0.2
    direct = 0.4 * sum(-logits[i, i] + torch.logsumexp(logits[i], 0) for i in range(5)) / 5
    assert abs(float(got.detach()) - float(direct)) < 1e-6


# ----------------------------------------------------------------------------- algorithms


def _model(spec: dict[str, Any]) -> Any:
    return build_model({"model": {**NORM, **spec}}, seed=0)


SIMCLR = {"type": "SimCLR", "backbone": TINY_VIT, "neck": _nonlinear(16, 16, 8),
          "head": {"type": "ContrastiveHead", "temperature": 0.1}}


def test_simclr_loss_is_nt_xent_over_the_batch():
    model = _model(SIMCLR)
    v1, v2 = _views()
    got = model.loss([v1, v2])["loss"]
    x = model.preprocess(torch.stack([v1, v2], 1).flatten(0, 1))
    z = model.neck(model.backbone(x))[0].double()
    z = z / (z.norm(dim=1, keepdim=True) + 1e-10)
    s = z @ z.T / 0.1
    total = 0.0
    for i in range(len(z)):  # positive: the other view of the same sample (row i ^ 1)
        others = [s[i, j] for j in range(len(z)) if j != i]
        total += float(-s[i, i ^ 1] + torch.logsumexp(torch.stack(others), 0))
    assert abs(float(got.detach()) - total / len(z)) < 1e-6


def test_simclr_identical_embeddings_give_log_2n_minus_1():
    head = build_component("head", {"type": "ContrastiveHead", "temperature": 0.5})
    n2 = 12  # all similarities equal: 1 positive among 2N - 1 candidates
    loss = head.loss(torch.ones(n2, 1), torch.ones(n2, n2 - 2))["loss"]
    assert abs(float(loss) - math.log(n2 - 1)) < 1e-6


MOCO = {"type": "MoCo", "queue_len": 12, "feat_dim": 8, "momentum": 0.01, "backbone": TINY_VIT,
        "neck": {"type": "MoCoV2Neck", "in_channels": 16, "hid_channels": 16, "out_channels": 8},
        "head": {"type": "ContrastiveHead", "temperature": 0.2}}


def test_moco_loss_queue_and_momentum_encoder():
    model = _model(MOCO)
    model.train()
    queue0 = model.queue.queue.clone()
    v1, v2 = _views()
    got = model.loss([v1, v2])["loss"]
    q = F.normalize(model.project(model.preprocess(v1)).double(), dim=1)
    with torch.no_grad():
        k = F.normalize(model.project(model.preprocess(v2)).double(), dim=1)  # teacher == online at start
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue0.double()], 1) / 0.2
    direct = (torch.logsumexp(logits, 1) - logits[:, 0]).mean()
    assert abs(float(got.detach()) - float(direct)) < 1e-6
    assert int(model.queue.queue_ptr) == 6 and torch.allclose(model.queue.queue[:, :6].T.double(), k, atol=1e-6)
    assert not any(p.requires_grad for p in model.momentum_encoder.parameters())
    # Validation leaves the queue alone.
    model.eval()
    model.loss([v1, v2])
    assert int(model.queue.queue_ptr) == 6
    # After an optimizer step the key encoder moves 1% of the way.
    online = [p.detach().clone() for p in model.online().parameters()]
    keys = [p.detach().clone() for p in model.momentum_encoder.parameters()]
    with torch.no_grad():
        for p in model.online().parameters():
            p.add_(1.0)
    model.after_optimizer_step(step=1, total_steps=10)
    for t, k0, o in zip(model.momentum_encoder.parameters(), keys, online, strict=True):
        torch.testing.assert_close(t, 0.99 * k0 + 0.01 * (o + 1.0))
    keys_in_state = {k for k in model.state_dict() if k.startswith(("momentum_encoder.", "queue."))}
    assert {"momentum_encoder.steps", "queue.queue", "queue.queue_ptr",
            "momentum_encoder.module.0.patch_embed.projection.weight"} <= keys_in_state


PREDICTOR = _nonlinear(8, 16, 8, with_bias=True, with_last_bn=False, with_avg_pool=False)
BYOL = {"type": "BYOL", "base_momentum": 0.01, "backbone": TINY_VIT,
        "neck": _nonlinear(16, 16, 8, with_bias=True, with_last_bn=False),
        "head": {"type": "LatentPredictHead", "predictor": PREDICTOR}}


def test_byol_loss_and_cosine_target_schedule():
    model = _model(BYOL)
    v1, v2 = _views()
    got = model.loss([v1, v2])["loss"]
    x1, x2 = model.preprocess(v1), model.preprocess(v2)
    p1 = model.head.predictor((model.project(x1),))[0].double()
    p2 = model.head.predictor((model.project(x2),))[0].double()
    with torch.no_grad():
        t1, t2 = model.project(x1).double(), model.project(x2).double()
    direct = 2 * (-F.cosine_similarity(p1, t2).mean() - F.cosine_similarity(p2, t1).mean())
    assert abs(float(got.detach()) - float(direct)) < 1e-6
    assert model.target_net.momentum_at(0, 100) == pytest.approx(0.01)
    assert model.target_net.momentum_at(100, 100) == pytest.approx(0.0)
    assert model.target_net.momentum_at(50, 100) == pytest.approx(0.005)


def test_simsiam_loss_and_fixed_predictor_lr_option():
    spec = {"type": "SimSiam", "backbone": TINY_VIT, "neck": _nonlinear(16, 16, 8, num_layers=3),
            "head": {"type": "LatentPredictHead",
                     "predictor": _nonlinear(8, 4, 8, with_avg_pool=False, with_last_bn=False, with_last_bias=True)}}
    model = _model(spec)
    v1, v2 = _views()
    got = model.loss([v1, v2])["loss"]
    z1, z2 = model.project(model.preprocess(v1)), model.project(model.preprocess(v2))
    p1, p2 = (model.head.predictor((z,))[0].double() for z in (z1, z2))
    direct = 0.5 * (-F.cosine_similarity(p1, z2.double()).mean() - F.cosine_similarity(p2, z1.double()).mean())
    assert abs(float(got.detach()) - float(direct)) < 1e-6
    assert model.param_group_options() == {"head.predictor.": {"fix_lr": True}}
    assert _model({**spec, "fix_pred_lr": False}).param_group_options() == {}
    assert any(name.startswith("head.predictor.") for name, _ in model.named_parameters())


def test_barlow_twins_loss():
    spec = {"type": "BarlowTwins", "backbone": TINY_VIT, "neck": _nonlinear(16, 16, 8, num_layers=3, with_last_bn=False),
            "head": {"type": "LatentCrossCorrelationHead", "in_channels": 8}}
    model = _model(spec)
    v1, v2 = _views(8)
    got = model.loss([v1, v2])["loss"]
    z1, z2 = (model.project(model.preprocess(v)).double() for v in (v1, v2))
    bn = lambda z: (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)  # noqa: E731
    c = bn(z1).T @ bn(z2) / 8
    direct = ((torch.diagonal(c) - 1) ** 2).sum() + 0.0051 * ((c**2).sum() - (torch.diagonal(c) ** 2).sum())
    assert abs(float(got.detach()) - float(direct)) < 1e-5 * max(1.0, float(direct))


def test_mocov3_loss_is_symmetric_and_the_backbone_freezes_its_patch_projection():
    spec = {"type": "MoCoV3", "base_momentum": 0.01,
            "backbone": {**TINY_VIT, "type": "MoCoV3ViT", "stop_grad_conv1": True},
            "neck": _nonlinear(16, 16, 8, num_layers=3, with_avg_pool=False, with_last_bn_affine=False),
            "head": {"type": "MoCoV3Head", "temperature": 0.2,
                     "loss": {"type": "CrossEntropyLoss", "loss_weight": 0.4},
                     "predictor": _nonlinear(8, 16, 8, with_avg_pool=False, with_last_bn_affine=False)}}
    model = _model(spec)
    bb = model.backbone
    assert not bb.patch_embed.projection.weight.requires_grad and not bb.pos_embed.requires_grad
    v1, v2 = _views()
    got = model.loss([v1, v2])["loss"]
    x1, x2 = model.preprocess(v1), model.preprocess(v2)
    q1, q2 = model.project(x1), model.project(x2)
    with torch.no_grad():
        k1, k2 = model.project(x1), model.project(x2)
    direct = model.head.loss(q1, k2)["loss"] + model.head.loss(q2, k1)["loss"]
    assert abs(float(got.detach()) - float(direct)) < 1e-6


def test_mocov3_vit_small_arch_and_sincos_positions():
    from pretrain_builtins.backbones.mae_vit import build_2d_sincos_position_embedding

    vit = build_component("backbone", {"type": "MoCoV3ViT", "arch": "mocov3-small", "img_size": 32,
                                       "patch_size": 16})
    assert vit.embed_dims == 384 and vit.num_layers == 12
    torch.testing.assert_close(vit.pos_embed.data, build_2d_sincos_position_embedding((2, 2), 384, cls_token=True))
    assert float(vit.cls_token.abs().max()) < 1e-4  # N(0, 1e-6)
    with pytest.raises(SpecError, match="unknown ViT arch"):
        build_component("backbone", {"type": "VisionTransformer", "arch": "mocov3-small"})  # not global


@pytest.mark.parametrize(("spec", "fragment"), [
    ({**MOCO, "feat_dim": 16}, "model.feat_dim is 16, but the width model.neck outputs"),
    ({**BYOL, "head": {"type": "LatentPredictHead", "predictor": {**PREDICTOR, "in_channels": 4}}},
     "model.head.predictor.in_channels is 4"),
    ({**BYOL, "head": {"type": "LatentPredictHead", "predictor": {**PREDICTOR, "out_channels": 4}}},
     "model.head.predictor.out_channels is 4"),
])
def test_width_mismatches_are_one_clear_error(spec: dict[str, Any], fragment: str):
    with pytest.raises(PretrainError, match=fragment.replace(".", r"\.")):
        _model(spec)


def test_algorithms_need_two_views():
    model = _model(SIMCLR)
    with pytest.raises(PretrainError, match="needs 2 views"):
        model.loss(_views()[0])
    issues = list(type(model).data_issues({}, split="val", views=1, batch_size=8))
    assert issues and issues[0][0] == "data.val.pipeline" and "MultiView" in issues[0][1]
    moco = _model(MOCO)
    issues = dict(type(moco).data_issues({"queue_len": 100}, split="train", views=2, batch_size=32, world_size=2))
    assert "model.queue_len" in issues and "64 keys" in issues["model.queue_len"]
