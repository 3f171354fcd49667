"""Global average pooling neck.

Provenance: MMPretrain ``models/necks/gap.py``. Pools every feature map of a
backbone's tuple to (N, C). Unlike the "Customize Models" guide's version (no
``super().__init__()``, tensor-only input), it accepts the backbone's tuple and
returns a tuple; a bare tensor in gives a bare tensor out, as in MMPretrain.
"""

from __future__ import annotations

from typing import Literal, overload

from torch import Tensor, nn

from pretrain.components import BaseNeck

__all__ = ["GlobalAveragePooling"]

_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


class GlobalAveragePooling(BaseNeck):
    """Average each feature map over its spatial dims: (N, C, *S) -> (N, C).

    Args:
        dim: Spatial dimensions pooled: 1 for (N, C, L), 2 for (N, C, H, W),
            3 for (N, C, D, H, W).

    """

    def __init__(self, *, dim: Literal[1, 2, 3] = 2) -> None:
        super().__init__()
        if dim not in (1, 2, 3):
            raise ValueError(f"GlobalAveragePooling dim must be 1, 2 or 3, got {dim!r}")
        self.dim = dim
        pools: dict[int, nn.Module] = {
            1: nn.AdaptiveAvgPool1d(1),
            2: nn.AdaptiveAvgPool2d((1, 1)),
            3: nn.AdaptiveAvgPool3d((1, 1, 1)),
        }
        self.gap = pools[dim]

    def _pool(self, x: Tensor) -> Tensor:
        if x.dim() != self.dim + 2:
            raise ValueError(
                f"GlobalAveragePooling(dim={self.dim}) expects inputs with {self.dim + 2} dims "
                f"(N, C, {_SPATIAL[self.dim]}), got shape "
                f"{tuple(x.shape)}"
            )
        return self.gap(x).flatten(1)  # (N, C)

    @overload
    def forward(self, inputs: Tensor) -> Tensor: ...
    @overload
    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]: ...

    def forward(self, inputs: Tensor | tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
        """Pool a tensor, or each tensor of a tuple/list (returned as a tuple)."""
        if isinstance(inputs, Tensor):
            return self._pool(inputs)
        if isinstance(inputs, tuple | list):
            return tuple(self._pool(x) for x in inputs)
        raise TypeError(f"GlobalAveragePooling expects a tensor or a tuple of tensors, got {type(inputs).__name__}")

    def extra_repr(self) -> str:
        """Show ``dim``."""
        return f"dim={self.dim}"
