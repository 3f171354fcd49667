"""Loss semantics: ``weight``, ``reduction_override``, ``avg_factor`` and ``loss_weight``.

The semantics are MMPretrain's ``weight_reduce_loss`` (see :mod:`pretrain.losses`):
``none`` keeps the per-sample or element-wise loss, ``mean``/``sum`` reduce it,
``avg_factor`` replaces the element count of a mean, and ``loss_weight`` scales
the result linearly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pretrain.testing._helpers import LOSS_N, call, close, first_differences, shape_of
from pretrain.testing._subject import Subject

__all__ = ["check_loss_avg_factor", "check_loss_reduction", "check_loss_weight", "check_loss_weight_scaling"]

def _loss_setup(subject: Subject) -> tuple[Any, Tensor, Tensor, Tensor]:
    inst = subject.build()
    pred, target = subject.example_inputs(inst, LOSS_N)
    with torch.no_grad():
        none = call(subject, "check_loss_reduction", "forward(..., reduction_override='none')",
                     lambda: inst(pred, target, reduction_override="none"))
    if not isinstance(none, torch.Tensor) or none.dim() == 0 or none.shape[0] != LOSS_N:
        raise subject.fail(
            "check_loss_reduction", f"reduction 'none' returned {shape_of(none)}; it must keep the batch dimension",
            "Honour reduction_override: 'none' returns the per-sample (N,) or element-wise (N, ...) loss.",
        )
    return inst, pred, target, none


def _expect(subject: Subject, check: str, got: Any, want: Tensor, what: str, fix: str) -> None:
    if not isinstance(got, torch.Tensor) or not close(got.detach(), want):
        if isinstance(got, torch.Tensor) and got.shape == want.shape and got.dim():
            # Same shape: the values are what is wrong, so show them.
            detail = f"got {shape_of(got)} with {first_differences(got.detach(), want)} (got vs expected)"
        else:
            shown = shape_of(got) if not isinstance(got, torch.Tensor) or got.dim() else f"{float(got):.6g}"
            wanted = shape_of(want) if want.dim() else f"{float(want):.6g}"
            detail = f"got {shown}, expected {wanted}"
        raise subject.fail(check, f"{what}: {detail}", fix)


def check_loss_weight(subject: Subject) -> None:
    """Per-sample ``weight`` scales each sample's loss; an all-zero weight gives zero loss."""
    name = "check_loss_weight"
    inst, pred, target, none = _loss_setup(subject)
    weight = torch.tensor([0.0, 1.0, 2.0, 0.5])
    fix = "Multiply the element-wise loss by `weight` before reducing (pretrain.losses.weighted_loss does it)."
    with torch.no_grad():
        got = inst(pred, target, weight=weight, reduction_override="none")
        _expect(subject, name, got, none * weight.view(-1, *[1] * (none.dim() - 1)),
                "reduction 'none' with weight [0, 1, 2, 0.5]", fix)
        zero = inst(pred, target, weight=torch.zeros(LOSS_N), reduction_override="mean")
    _expect(subject, name, zero, torch.zeros(()), "mean loss with an all-zero weight", fix)


def check_loss_reduction(subject: Subject) -> None:
    """``reduction_override`` none/mean/sum give the element-wise loss, its mean and its sum."""
    name = "check_loss_reduction"
    inst, pred, target, none = _loss_setup(subject)
    fix = "Honour reduction_override ('none' | 'mean' | 'sum'), e.g. through pretrain.losses.weighted_loss."
    with torch.no_grad():
        for reduction, want in (("mean", none.mean()), ("sum", none.sum())):
            got = inst(pred, target, reduction_override=reduction)
            _expect(subject, name, got, want, f"reduction {reduction!r}", fix)


def check_loss_avg_factor(subject: Subject) -> None:
    """``avg_factor`` replaces the element count of a mean (and leaves sums and 'none' alone)."""
    name = "check_loss_avg_factor"
    inst, pred, target, none = _loss_setup(subject)
    fix = ("With avg_factor, 'mean' is loss.sum() / avg_factor; 'sum' and 'none' ignore it "
           "(pretrain.losses.weight_reduce_loss).")
    with torch.no_grad():
        _expect(subject, name, inst(pred, target, avg_factor=3.0, reduction_override="mean"),
                none.sum() / 3.0, "mean with avg_factor=3", fix)
        _expect(subject, name, inst(pred, target, avg_factor=3.0, reduction_override="sum"),
                none.sum(), "sum with avg_factor=3", fix)
        _expect(subject, name, inst(pred, target, avg_factor=3.0, reduction_override="none"),
                none, "'none' with avg_factor=3", fix)


def check_loss_weight_scaling(subject: Subject) -> None:
    """Doubling ``loss_weight`` doubles the loss (it is a linear factor)."""
    name = "check_loss_weight_scaling"
    fields = subject.node.schema.model.model_fields
    if "loss_weight" not in fields:
        raise subject.fail(name, "there is no loss_weight field",
                           "Add `loss_weight: float = 1.0` and multiply the returned loss by it; heads and specs "
                           "use it to balance losses.")
    base = float(subject.params.get("loss_weight", 1.0)) or 1.0
    one = subject.build(table={**subject.config, "loss_weight": base}, check=name)
    two = subject.build(table={**subject.config, "loss_weight": 2 * base}, check=name)
    pred, target = subject.example_inputs(one, LOSS_N)
    with torch.no_grad():
        a = one(pred, target, reduction_override="mean")
        b = two(pred, target, reduction_override="mean")
    _expect(subject, name, b, 2 * a, f"the loss with loss_weight={2 * base} (vs {base})",
            "Return loss_weight * loss (after reduction).")
