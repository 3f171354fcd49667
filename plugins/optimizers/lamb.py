"""Lamb: Adam with a layer-wise trust ratio (You et al., 2020, arXiv:1904.00962).

Provenance: MMPretrain's ``Lamb`` (``mmpretrain/engine/optimizers/lamb.py``, from
timm's NVIDIA-FusedLamb-like variant): same type name, fields, defaults and update::

    g  = grad / max(1, ||all grads||₂ / max_grad_norm)      (global clipping)
    m  = beta1 * m + (1 - beta1) * g          (grad_averaging; else + g)
    v  = beta2 * v + (1 - beta2) * g²
    u  = (m / bc1) / (sqrt(v / bc2) + eps) + weight_decay * w
    u *= ||w|| / ||u||   if weight_decay != 0 or always_adapt   (1 if either norm is 0;
                          capped at 1 with trust_clip)
    w -= lr * u

Parameters without weight decay skip the trust ratio; MMPretrain's Lamb recipes give
norms and biases no decay through ``paramwise_cfg`` (``norm_decay_mult = 0``,
``bias_decay_mult = 0``). Here ``exclude_bias_and_norm = true`` (the default) does the
same for every 1-D parameter. Differences: the gradients are not divided in place
(MMPretrain's ``p.grad.div_`` leaves the clipped values in ``.grad``), and the step
count lives in each parameter's state, so it is saved with the optimizer state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import Tensor
from torch.optim.optimizer import Optimizer

__all__ = ["Lamb"]


class Lamb(Optimizer):
    """Adam-style moments with a per-tensor trust ratio ``||w|| / ||update||`` (large-batch training).

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate.
        bias_correction: Correct the moments for their zero initialisation.
        betas: Coefficients of the running averages of the gradient and its square.
        eps: Added to the denominator.
        weight_decay: Decoupled weight decay added to the update.
        grad_averaging: Scale the new gradient by ``1 - beta1`` in the first moment.
        max_grad_norm: Clip the global gradient norm to this value first.
        trust_clip: Cap the trust ratio at 1 (LAMBC).
        always_adapt: Apply the trust ratio to parameters without weight decay too.
        exclude_bias_and_norm: Give 1-D parameters (biases, norm weights) no weight decay
            (and so, unless ``always_adapt``, no trust ratio), as MMPretrain's Lamb configs do.

    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        lr: Annotated[float, Field(gt=0)] = 1e-3,
        bias_correction: bool = True,
        betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999),
        eps: Annotated[float, Field(ge=0)] = 1e-6,
        weight_decay: Annotated[float, Field(ge=0)] = 0.01,
        grad_averaging: bool = True,
        max_grad_norm: Annotated[float, Field(gt=0)] | None = 1.0,
        trust_clip: bool = False,
        always_adapt: bool = False,
        exclude_bias_and_norm: bool = True,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"Invalid lr/eps/weight_decay: {lr}, {eps}, {weight_decay}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Invalid betas: {betas}")
        defaults = {"lr": lr, "bias_correction": bias_correction, "betas": betas, "eps": eps,
                    "weight_decay": weight_decay, "grad_averaging": grad_averaging,
                    "max_grad_norm": max_grad_norm, "trust_clip": trust_clip, "always_adapt": always_adapt,
                    "exclude_bias_and_norm": exclude_bias_and_norm}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step (``closure`` re-evaluates the loss, optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return loss
        if any(g.is_sparse for g in grads):
            raise RuntimeError("Lamb does not support sparse gradients")
        max_norm = self.defaults["max_grad_norm"]
        clip: Tensor | float = 1.0
        if max_norm is not None:
            global_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            clip = torch.where(global_norm > max_norm, global_norm / max_norm, torch.ones_like(global_norm))
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            beta3 = 1 - beta1 if group["grad_averaging"] else 1.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad / clip
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                step = float(state["step"])
                bc1, bc2 = ((1 - beta1**step, 1 - beta2**step) if group["bias_correction"] else (1.0, 1.0))
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=beta3)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / math.sqrt(bc2)).add_(group["eps"])
                update = (exp_avg / bc1).div_(denom)
                weight_decay = 0.0 if group["exclude_bias_and_norm"] and p.ndim <= 1 else group["weight_decay"]
                if weight_decay != 0:
                    update.add_(p, alpha=weight_decay)
                if weight_decay != 0 or group["always_adapt"]:
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    one = torch.ones_like(w_norm)
                    trust = torch.where(w_norm > 0, torch.where(u_norm > 0, w_norm / u_norm, one), one)
                    if group["trust_clip"]:
                        trust = torch.minimum(trust, one)
                    update.mul_(trust)
                p.add_(update, alpha=-group["lr"])
        return loss
