"""Activation layers by name: the one factory every built-in component uses.

``HSigmoid`` is MMCV's default ``HSigmoid(bias=3, divisor=6)``, i.e. ``relu6(x + 3) / 6``,
which equals ``nn.Hardsigmoid``; ``HSwish`` is ``nn.Hardswish``; ``Swish`` (MMCV's name,
``x * sigmoid(x)``, the EfficientNet activation) is ``nn.SiLU``.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from torch import nn
from typing_extensions import TypedDict

__all__ = ["ActCfg", "ActName", "build_activation"]

#: Activation names understood by :func:`build_activation` (MMCV's ``act_cfg`` types).
ActName: TypeAlias = Literal[
    "ReLU", "ReLU6", "HSwish", "HSigmoid", "GELU", "SiLU", "Swish", "Tanh", "Sigmoid"
]



class ActCfg(TypedDict):
    """MMCV's ``act_cfg`` table, e.g. ``{type = "Swish"}``."""

    type: ActName


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "ReLU": nn.ReLU,
    "ReLU6": nn.ReLU6,
    "HSwish": nn.Hardswish,
    "HSigmoid": nn.Hardsigmoid,
    "GELU": nn.GELU,
    "SiLU": nn.SiLU,
    "Swish": nn.SiLU,
    "Tanh": nn.Tanh,
    "Sigmoid": nn.Sigmoid,
}
#: Activations whose torch module takes ``inplace``.
_INPLACE = frozenset({"ReLU", "ReLU6", "HSwish", "HSigmoid", "SiLU", "Swish"})


def build_activation(name: ActName | None, *, inplace: bool = False) -> nn.Module:
    """Return a fresh activation module for ``name`` (``None`` -> identity).

    Args:
        name: One of :data:`ActName`, or None for no activation.
        inplace: Overwrite the input where the activation supports it (saves memory
            after a BatchNorm; never on a tensor something else still reads).

    Raises:
        ValueError: Unknown name.

    """
    if name is None:
        return nn.Identity()
    cls = _ACTIVATIONS.get(name)
    if cls is None:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(_ACTIVATIONS)}")
    return cls(inplace=True) if inplace and name in _INPLACE else cls()
