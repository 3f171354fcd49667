"""Optimizer components (``[train.optimizer] type = ...``): torch's SGD/Adam/AdamW/RMSprop, LARS, Lamb.

Each is a ``torch.optim.Optimizer`` subclass with a typed, keyword-only signature after
``params``: the spec gives the fields, the engine the parameter groups.
"""

from __future__ import annotations

from pretrain_builtins.optimizers.lamb import Lamb
from pretrain_builtins.optimizers.lars import LARS
from pretrain_builtins.optimizers.torch_optim import SGD, Adam, AdamW, RMSprop

__all__ = ["LARS", "SGD", "Adam", "AdamW", "Lamb", "RMSprop"]
