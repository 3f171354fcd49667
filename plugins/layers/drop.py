"""Stochastic depth (Huang et al., 2016, "Deep Networks with Stochastic Depth"), as in MMCV/timm."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["DropPath", "drop_path"]


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False) -> Tensor:
    """Drop whole samples of a residual branch with probability ``drop_prob``.

    Kept samples are scaled by ``1 / (1 - drop_prob)`` so the expectation is
    unchanged. A no-op outside training or when ``drop_prob == 0``.

    Args:
        x: Branch output, any shape with the batch first.
        drop_prob: Probability of dropping a sample's branch.
        training: Whether the module is in training mode.

    Returns:
        ``x`` with some samples zeroed and the rest rescaled.

    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    # One Bernoulli draw per sample, broadcast over every other dim; the rescaling is done
    # on the (B, 1, ...) mask, not on the whole branch (one full-size op instead of two).
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep_prob).div_(keep_prob)
    return x * mask


class DropPath(nn.Module):
    """Stochastic depth per sample, applied to a residual branch.

    Args:
        drop_prob: Probability of dropping the branch for a sample, in [0, 1).

    """

    def __init__(self, drop_prob: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"DropPath drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        """Apply stochastic depth (identity in eval mode)."""
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        """Show the drop probability in ``print(model)``."""
        return f"drop_prob={self.drop_prob}"
