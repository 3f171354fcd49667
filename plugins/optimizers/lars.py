"""LARS: SGD with a layer-wise trust ratio (You, Gitman & Ginsburg, 2017, arXiv:1708.03888).

Provenance: MMPretrain's ``LARS`` (``mmpretrain/engine/optimizers/lars.py``), same
fields, defaults and update::

    local_lr = eta * ||w|| / (||g|| + weight_decay * ||w|| + eps)   (1 if either norm is 0)
    d = (g + weight_decay * w) * lr * local_lr
    buf = d (first step) | momentum * buf + (1 - dampening) * d
    w -= d + momentum * buf (nesterov) | buf

MMPretrain's LARS recipes (SimCLR, BYOL, Barlow Twins) exclude normalisation
parameters and biases from the trust ratio and from weight decay through
``paramwise_cfg`` keys (``bn``, ``bias``, ``downsample.1``: ``lars_exclude=True,
decay_mult=0``). Here that is the default, ``exclude_bias_and_norm = true``: every
1-D parameter (biases, norm scales and shifts; exactly what those keys select in a
ResNet and its necks) gets ``local_lr = 1`` and no weight decay. A parameter group
may also set ``lars_exclude = True`` (trust ratio 1, its own weight decay kept), as
MMPretrain's ``paramwise_cfg`` does. Unlike MMPretrain, the norms are not read back
to the host (no ``.item()`` per parameter), so a step does not synchronise the GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor
from torch.optim.optimizer import Optimizer

__all__ = ["LARS"]


class LARS(Optimizer):
    """SGD with momentum whose step per parameter tensor is scaled by ``eta · ||w|| / ||g||``.

    Args:
        params: Parameters or parameter groups (a group may set ``lars_exclude``).
        lr: Base learning rate.
        momentum: Momentum factor.
        weight_decay: L2 penalty added to the gradient (before the trust ratio).
        dampening: Dampening of the momentum.
        eta: LARS coefficient (trust ratio scale).
        nesterov: Nesterov momentum (needs momentum > 0 and dampening 0).
        eps: Added to the trust ratio's denominator.
        exclude_bias_and_norm: Give 1-D parameters (biases, norm weights) no trust ratio
            and no weight decay, as MMPretrain's LARS configs do.

    """

    example_config: ClassVar[dict[str, Any]] = {"lr": 0.1}

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        lr: Annotated[float, Field(gt=0)],
        momentum: Annotated[float, Field(ge=0)] = 0.0,
        weight_decay: Annotated[float, Field(ge=0)] = 0.0,
        dampening: Annotated[float, Field(ge=0)] = 0.0,
        eta: Annotated[float, Field(ge=0)] = 0.001,
        nesterov: bool = False,
        eps: Annotated[float, Field(ge=0)] = 1e-8,
        exclude_bias_and_norm: bool = True,
    ) -> None:
        for name, value in (("learning rate", lr), ("momentum", momentum), ("weight_decay", weight_decay),
                            ("LARS coefficient eta", eta), ("eps", eps)):
            if value < 0.0:
                raise ValueError(f"Invalid {name}: {value}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
                    "nesterov": nesterov, "eta": eta, "eps": eps,
                    "exclude_bias_and_norm": exclude_bias_and_norm}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step (``closure`` re-evaluates the loss, optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            momentum, dampening = group["momentum"], group["dampening"]
            lr, eta, eps = group["lr"], group["eta"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                auto_excluded = group["exclude_bias_and_norm"] and p.ndim <= 1
                weight_decay = 0.0 if auto_excluded else group["weight_decay"]
                if auto_excluded or group.get("lars_exclude", False):
                    scale: Tensor | float = lr
                else:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    trust = eta * w_norm / (g_norm + weight_decay * w_norm + eps)
                    ok = (w_norm != 0) & (g_norm != 0)
                    scale = torch.where(ok, trust, torch.ones_like(trust)) * lr
                d_p = grad.add(p, alpha=weight_decay).mul(scale)
                if momentum != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        buf = state["momentum_buffer"] = torch.clone(d_p).detach()
                    else:
                        buf = state["momentum_buffer"]
                        buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
                    d_p = d_p.add(buf, alpha=momentum) if group["nesterov"] else buf
                p.sub_(d_p)
        return loss
