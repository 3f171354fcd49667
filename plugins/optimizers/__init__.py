"""Optimizers for large-batch self-supervised training: LARS and Lamb (MMPretrain's type names).

Both are ``torch.optim.Optimizer`` subclasses taking torch's parameter groups, so any
optimizer builder can construct them by name.
"""

from __future__ import annotations

from pretrain_builtins.optimizers.lamb import Lamb
from pretrain_builtins.optimizers.lars import LARS

__all__ = ["LARS", "Lamb"]
