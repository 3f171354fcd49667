"""``torch.optim``'s SGD, Adam, AdamW and RMSprop as optimizer components (``[train.optimizer]``).

Each is the torch class with a typed, keyword-only signature, so its spec fields,
their bounds and their documentation come from the signature like any component's
(``pretrain describe SGD``). The engine passes the parameter groups (with their
paramwise multipliers) as ``params``; the spec passes everything else. Defaults
follow MMPretrain's configs where they differ from torch's: SGD's momentum is 0.9,
AdamW's weight decay 0.01 (torch's own default).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

__all__ = ["SGD", "Adam", "AdamW", "RMSprop"]

Params = Iterable[Tensor] | Iterable[dict[str, Any]]
Beta = Annotated[float, Field(ge=0, lt=1)]


class SGD(torch.optim.SGD):
    """Stochastic gradient descent with momentum (``torch.optim.SGD``).

    Args:
        params: Parameter groups (passed by the engine).
        lr: Base learning rate.
        momentum: Momentum factor.
        dampening: Dampening for momentum.
        weight_decay: L2 penalty (coupled: added to the gradient).
        nesterov: Nesterov momentum (needs momentum > 0 and dampening = 0).

    """

    example_config: ClassVar[dict[str, Any]] = {"lr": 0.1}

    def __init__(
        self,
        params: Params,
        *,
        lr: Annotated[float, Field(gt=0, allow_inf_nan=False)],
        momentum: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.9,
        dampening: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0,
        weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """Nesterov momentum needs a momentum and no dampening (torch raises otherwise)."""
        if params["nesterov"] and (params["momentum"] <= 0 or params["dampening"] != 0):
            yield "nesterov", "nesterov = true needs momentum > 0 and dampening = 0"


class AdamW(torch.optim.AdamW):
    """Adam with decoupled weight decay (``torch.optim.AdamW``).

    Args:
        params: Parameter groups (passed by the engine).
        lr: Base learning rate.
        betas: Coefficients of the running averages of the gradient and its square.
        eps: Denominator term for numerical stability.
        weight_decay: Decoupled weight decay.
        amsgrad: Use the AMSGrad variant.

    """

    example_config: ClassVar[dict[str, Any]] = {"lr": 1e-3}

    def __init__(
        self,
        params: Params,
        *,
        lr: Annotated[float, Field(gt=0, allow_inf_nan=False)],
        betas: tuple[Beta, Beta] = (0.9, 0.999),
        eps: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e-8,
        weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.01,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


class Adam(torch.optim.Adam):
    """Adam (``torch.optim.Adam``; weight decay is coupled, an L2 penalty).

    Args:
        params: Parameter groups (passed by the engine).
        lr: Base learning rate.
        betas: Coefficients of the running averages of the gradient and its square.
        eps: Denominator term for numerical stability.
        weight_decay: L2 penalty (coupled: added to the gradient).
        amsgrad: Use the AMSGrad variant.

    """

    example_config: ClassVar[dict[str, Any]] = {"lr": 1e-3}

    def __init__(
        self,
        params: Params,
        *,
        lr: Annotated[float, Field(gt=0, allow_inf_nan=False)],
        betas: tuple[Beta, Beta] = (0.9, 0.999),
        eps: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e-8,
        weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


class RMSprop(torch.optim.RMSprop):
    """RMSprop (``torch.optim.RMSprop``).

    Args:
        params: Parameter groups (passed by the engine).
        lr: Base learning rate.
        alpha: Smoothing constant of the squared-gradient average.
        eps: Denominator term for numerical stability.
        weight_decay: L2 penalty (coupled: added to the gradient).
        momentum: Momentum factor.
        centered: Normalise by the estimated gradient variance.

    """

    example_config: ClassVar[dict[str, Any]] = {"lr": 1e-3}

    def __init__(
        self,
        params: Params,
        *,
        lr: Annotated[float, Field(gt=0, allow_inf_nan=False)],
        alpha: Annotated[float, Field(gt=0, lt=1)] = 0.99,
        eps: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e-8,
        weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0,
        momentum: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0,
        centered: bool = False,
    ) -> None:
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered)
