"""Exponential moving average of a model's weights (Polyak averaging).

``ema = decay * ema + (1 - decay) * weight`` after every ``every_steps`` optimizer
steps. Note the convention: ``decay`` is the weight of the *old* average (the
paper's m = 0.999), unlike MMEngine's ``momentum`` = 1 - m. Buffers (BatchNorm
running statistics) are copied, not averaged, as in timm's ``ModelEmaV2``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from pretrain.spec.sections import EMAConfig

__all__ = ["ModelEMA"]


class ModelEMA:
    """A frozen copy of a model that tracks the running average of its weights.

    Args:
        model: The (unwrapped) model being trained; copied once.
        cfg: Decay, update interval and warm-up.

    """

    def __init__(self, model: nn.Module, cfg: EMAConfig) -> None:
        self.cfg = cfg
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def decay(self) -> float:
        """Decay for the next update (``min(decay, (1+n)/(10+n))`` with warm-up)."""
        if self.cfg.warmup:
            return min(self.cfg.decay, (1 + self.updates) / (10 + self.updates))
        return self.cfg.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold ``model``'s current weights in, if ``step`` (1-based, after the step) is due."""
        if step % self.cfg.every_steps:
            return
        d = self.decay()
        ema_p: list[torch.Tensor] = list(self.module.parameters())
        live_p: list[torch.Tensor] = [p.detach() for p in model.parameters()]
        if ema_p:
            torch._foreach_lerp_(ema_p, live_p, 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, keyed like the model's state dict."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        """Restore the averaged weights and the update counter."""
        self.module.load_state_dict(state)
        self.updates = updates
