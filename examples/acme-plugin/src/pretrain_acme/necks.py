"""GeMPooling: generalised-mean pooling (Radenović et al., 2018, arXiv:1711.02512) as a neck.

The seed guide's "add a new neck" step (``GlobalAveragePooling``), with the two
mistakes of MMPretrain's printed version fixed: it calls ``super().__init__()``,
and it takes the backbone's *tuple* of feature maps and returns a tuple.
"""

# [snippet neck]
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseNeck

__all__ = ["GeMPooling"]


class GeMPooling(BaseNeck):
    """Generalised-mean pooling of each feature map: (N, C, H, W) -> (N, C).

    ``(mean over H, W of x.clamp(min=eps) ** p) ** (1 / p)``: p = 1 is average
    pooling, large p approaches max pooling.

    Args:
        p: Initial exponent (the paper's default is 3).
        eps: Lower clamp of the input, so that fractional powers stay defined.
        learnable: Learn p with the network; otherwise p is a fixed buffer.
    """

    def __init__(
        self,
        *,
        p: Annotated[float, Field(gt=0)] = 3.0,
        eps: Annotated[float, Field(gt=0)] = 1e-6,
        learnable: bool = True,
    ) -> None:
        super().__init__()  # the guide's GlobalAveragePooling forgot this
        self.eps = eps
        initial = torch.tensor(float(p))
        if learnable:
            self.p = nn.Parameter(initial)
        else:
            # A buffer is saved in checkpoints but gets no gradient (and needs none).
            self.register_buffer("p", initial)

    def _pool(self, x: Tensor) -> Tensor:
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3))  # (N, C)
        return pooled.pow(1.0 / self.p)

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Pool every level of the backbone's tuple; returns a tuple of (N, C)."""
        return tuple(self._pool(x) for x in inputs)
# [/snippet]
