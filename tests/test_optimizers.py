"""LARS and Lamb against updates computed by hand (MMPretrain's formulas)."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain_builtins.optimizers import LARS, Lamb


def _params() -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))  # 1-D: a bias
    return w, b


def _set_grads(w: torch.Tensor, b: torch.Tensor, gw: list[float], gb: float) -> None:
    w.grad = torch.tensor([gw])
    b.grad = torch.tensor([gb])


def test_lars_two_steps_by_hand_with_bias_and_norm_excluded():
    w, b = _params()
    opt = LARS([w, b], lr=0.1, momentum=0.9, weight_decay=0.01, eta=0.001)
    lr, eta, wd, mom = 0.1, 0.001, 0.01, 0.9
    ref_w, ref_b = [3.0, 4.0], 1.0
    buf_w: list[float] | None = None
    buf_b: float | None = None
    for gw, gb in (([0.6, 0.8], 0.5), ([0.3, -0.4], -0.25)):
        _set_grads(w, b, gw, gb)
        opt.step()
        w_norm = math.hypot(*ref_w)
        g_norm = math.hypot(*gw)
        local = eta * w_norm / (g_norm + wd * w_norm + 1e-8)
        d_w = [(g + wd * x) * lr * local for g, x in zip(gw, ref_w, strict=True)]
        buf_w = d_w if buf_w is None else [mom * u + d for u, d in zip(buf_w, d_w, strict=True)]
        ref_w = [x - u for x, u in zip(ref_w, buf_w, strict=True)]
        d_b = gb * lr  # excluded: trust ratio 1 and no weight decay
        buf_b = d_b if buf_b is None else mom * buf_b + d_b
        ref_b -= buf_b
        torch.testing.assert_close(w.detach(), torch.tensor([ref_w]), rtol=0, atol=1e-7)
        torch.testing.assert_close(b.detach(), torch.tensor([ref_b]), rtol=0, atol=1e-7)


def test_lars_adapts_everything_when_asked_and_honours_lars_exclude_groups():
    w, b = _params()
    opt = LARS([{"params": [w]}, {"params": [b], "lars_exclude": True}], lr=1.0, weight_decay=0.1,
               eta=0.01, exclude_bias_and_norm=False)
    _set_grads(w, b, [0.6, 0.8], 0.5)
    opt.step()
    local = 0.01 * 5.0 / (1.0 + 0.1 * 5.0 + 1e-8)
    expect_w = [x - (g + 0.1 * x) * local for g, x in zip([0.6, 0.8], [3.0, 4.0], strict=True)]
    torch.testing.assert_close(w.detach(), torch.tensor([expect_w]), rtol=0, atol=1e-7)
    # lars_exclude: trust ratio 1, but the group's weight decay still applies (MMPretrain).
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - (0.5 + 0.1 * 1.0)]), rtol=0, atol=1e-7)


def test_lars_zero_norms_and_nesterov():
    w = torch.nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=0.5, momentum=0.9, nesterov=True)
    w.grad = torch.ones(2, 2)
    opt.step()  # ||w|| = 0: trust ratio 1; nesterov: d + momentum * buf, buf = d
    torch.testing.assert_close(w.detach(), torch.full((2, 2), -0.5 * (1 + 0.9)))
    with pytest.raises(ValueError, match="Nesterov"):
        LARS([w], lr=0.1, nesterov=True)


def test_lamb_one_step_by_hand_with_clipping_and_exclusion():
    w, b = _params()
    opt = Lamb([w, b], lr=0.01, weight_decay=0.1, betas=(0.9, 0.999), eps=1e-6, max_grad_norm=1.0)
    gw, gb = [3.0, 0.0], 4.0  # global norm 5 > 1: gradients divided by 5
    _set_grads(w, b, gw, gb)
    opt.step()
    cw = [g / 5 for g in gw]
    cb = gb / 5
    # First step with bias correction: m_hat = g, v_hat = g^2 -> g / (|g| + eps).
    u = [g / (abs(g) + 1e-6) + 0.1 * x for g, x in zip(cw, [3.0, 4.0], strict=True)]
    trust = 5.0 / math.hypot(*u)
    expect_w = [x - 0.01 * trust * ui for x, ui in zip([3.0, 4.0], u, strict=True)]
    torch.testing.assert_close(w.detach(), torch.tensor([expect_w]), rtol=0, atol=1e-6)
    # The bias has no weight decay, hence no trust ratio: a plain Adam step.
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 0.01 * cb / (abs(cb) + 1e-6)]), rtol=0, atol=1e-6)
    assert w.grad is not None and w.grad[0, 0] == 3.0  # gradients are not clipped in place


def test_lamb_second_step_moments_and_trust_clip():
    w = torch.nn.Parameter(torch.tensor([[1.0, 1.0]]))
    opt = Lamb([w], lr=0.1, weight_decay=0.0, always_adapt=True, trust_clip=True, max_grad_norm=None)
    b1, b2 = 0.9, 0.999
    ref = [1.0, 1.0]
    m = [0.0, 0.0]
    v = [0.0, 0.0]
    for step, g in enumerate(([0.5, -1.0], [0.25, 2.0]), start=1):
        w.grad = torch.tensor([g])
        opt.step()
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g, strict=True)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g, strict=True)]
        u = [(mi / (1 - b1**step)) / (math.sqrt(vi / (1 - b2**step)) + 1e-6) for mi, vi in zip(m, v, strict=True)]
        trust = min(1.0, math.hypot(*ref) / math.hypot(*u))
        ref = [x - 0.1 * trust * ui for x, ui in zip(ref, u, strict=True)]
        torch.testing.assert_close(w.detach(), torch.tensor([ref]), rtol=0, atol=1e-6)
    assert float(opt.state[w]["step"]) == 2.0


@pytest.mark.parametrize("cls", [LARS, Lamb])
def test_state_survives_the_checkpoint_format_bitwise(cls):
    """What resume needs once optimizers are a plugin kind: the run-state round trip."""
    from pretrain.engine import checkpoint as ckpt

    def make() -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(2))]
        kwargs = {"lr": 0.1, "momentum": 0.9} if cls is LARS else {"lr": 0.01}
        return params, cls([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}], **kwargs)

    def step(params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, k: int) -> None:
        for p in params:
            p.grad = torch.full_like(p, 0.1 * k) + p.detach()
        opt.step()

    ref_p, ref = make()
    for k in range(3):
        step(ref_p, ref, k)
    p, opt = make()
    step(p, opt, 0)
    tensors, doc = ckpt.flatten_optimizer(opt.state_dict())
    p2, fresh = make()
    with torch.no_grad():
        for a, b in zip(p2, p, strict=True):
            a.copy_(b)
    fresh.load_state_dict(ckpt.unflatten_optimizer(tensors, doc, fresh.state_dict()))
    for k in (1, 2):
        step(p2, fresh, k)
    for a, b in zip(p2, ref_p, strict=True):
        assert torch.equal(a, b)


def test_param_group_options_and_lars_exclude_reach_the_groups() -> None:
    """A model's ``param_group_options`` and a custom key's ``lars_exclude`` become group options."""
    from pretrain.engine.optim import param_groups
    from pretrain.spec.sections import ParamwiseConfig

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Linear(3, 3)
            self.pred = torch.nn.Linear(3, 3)

        def param_group_options(self) -> dict[str, dict[str, object]]:
            return {"pred.": {"fix_lr": True}}

    groups = param_groups(Net(), 0.1, 0.01, ParamwiseConfig(custom_keys={"body.bias": {"lars_exclude": True}}))
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["pred.weight"]["fix_lr"] is True and "fix_lr" not in by_name["body.weight"]
    assert by_name["body.bias"]["lars_exclude"] is True and "lars_exclude" not in by_name["body.weight"]
    assert param_groups(Net(), 0.1, 0.0, None)[-1]["fix_lr"] is True  # without paramwise too


@pytest.mark.slow
def test_simsiam_predictor_keeps_its_base_learning_rate(tmp_path) -> None:
    """MMPretrain's SimSiamHook(fix_pred_lr=True): the predictor is outside the cosine schedule."""
    from pathlib import Path

    from pretrain import load_spec, validate_spec
    from pretrain.engine.trainer import Trainer

    spec = Path(__file__).resolve().parents[1] / "examples/specs/simsiam_vit-tiny_digits.toml"
    raw = load_spec(str(spec), ["train.epochs=2", "train.max_steps=3", "train.device=\"cpu\""])
    trainer = Trainer(validate_spec(raw), tmp_path / "run", live=False)
    trainer.setup()
    trainer.optimizer_step([next(iter(trainer.loaders.train))])
    trainer.close()
    fixed = [g for g in trainer.optimizer.param_groups if g.get("fix_lr")]
    scheduled = [g for g in trainer.optimizer.param_groups if not g.get("fix_lr")]
    assert fixed and all(g["lr"] == g["base_lr"] for g in fixed)
    assert all(any(n.startswith("head.predictor.") for n in g["names"]) for g in fixed)
    assert scheduled and all(g["lr"] != g["base_lr"] for g in scheduled)
