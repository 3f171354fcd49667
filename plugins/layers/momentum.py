"""Momentum (EMA) teacher: a frozen copy of online modules that trails their weights.

Provenance: MMEngine's ``ExponentialMovingAverage`` and MMPretrain's ``CosineEMA``
(``mmpretrain/models/utils/ema.py``), which MoCo, MoCo v3 and BYOL wrap around
``nn.Sequential(backbone, neck)``. The conventions are MMPretrain's, so configs port
unchanged:

* ``momentum`` is the *update rate*: ``teacher = (1 - m) * teacher + m * online``
  (MoCo's ``momentum = 0.001`` is the paper's decay 0.999);
* the cosine schedule (BYOL, MoCo v3) anneals the rate from ``momentum`` at step 0
  to ``end_momentum`` at the last step:
  ``m(s) = end - (end - base) * (cos(pi * s / T) + 1) / 2``;
* buffers (BatchNorm statistics) are copied from the online modules, not averaged;
* the teacher starts as an exact copy of the online modules when it is first used.

Differences, by design: the step ``s`` and the run length ``T`` come from the
training engine (``model.after_optimizer_step(step=..., total_steps=...)``), never
from a global message hub (MMPretrain reads ``max_iters`` from one); the teacher's
weights and its ``steps`` counter are parameters and a persistent buffer of the
model, so every checkpoint carries them and a resumed run continues bit for bit.

The update happens after each optimizer step. MMPretrain updates at the start of
the next iteration, before the teacher's forward: the teacher sees the same
weights either way (after step ``s`` it holds ``m(s)``-average of the weights of
step ``s``).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MomentumTeacher", "cosine_momentum"]


def cosine_momentum(base: float, end: float, step: int, total_steps: int) -> float:
    """MMPretrain's ``CosineEMA`` rate at ``step`` of ``total_steps``: ``base`` at 0, ``end`` at the end."""
    if total_steps <= 0:
        return base
    progress = min(max(step, 0), total_steps) / total_steps
    return end - (end - base) * (math.cos(math.pi * progress) + 1) / 2


class MomentumTeacher(nn.Module):
    """A no-gradient copy of ``online`` updated as an exponential moving average of it.

    ``teacher(x)`` runs the copy (call it under ``torch.no_grad()``). The owner calls
    :meth:`update` after every optimizer step, typically from its
    ``after_optimizer_step(step, total_steps)``, and :meth:`ensure_synced` before the
    teacher's first forward so that it starts equal to the online modules (also after
    ``Pretrained`` init rules, which run after construction).

    Args:
        online: The modules to follow, e.g. ``nn.Sequential(backbone, neck)``; deep-copied.
        momentum: Update rate ``m`` of ``teacher = (1 - m) * teacher + m * online``
            (at step 0 of the cosine schedule).
        end_momentum: With ``cosine=True``, the rate at the last step (MMPretrain's
            ``CosineEMA`` default 0: the teacher freezes at the end).
        cosine: Anneal the rate from ``momentum`` to ``end_momentum`` with a cosine over
            the run (``CosineEMA``); otherwise it is constant (``ExponentialMovingAverage``).

    State dict keys: ``module.<i>.<...>`` (the copy, as MMEngine's averaged model) and
    ``steps`` (how many updates, the initial copy included).

    """

    steps: Tensor

    def __init__(
        self, online: nn.Module, momentum: float, *, end_momentum: float = 0.0, cosine: bool = False
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0 or not 0.0 <= end_momentum <= 1.0:
            raise ValueError(f"momentum rates must lie in [0, 1], got {momentum} and {end_momentum}")
        self.module = copy.deepcopy(online).requires_grad_(False)
        self.momentum = momentum
        self.end_momentum = end_momentum
        self.cosine = cosine
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))
        self._synced = False
        # Loaded weights may come from an unsynced model: check the counter again.
        self.register_load_state_dict_post_hook(lambda module, _keys: setattr(module, "_synced", False))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the teacher copy."""
        return self.module(*args, **kwargs)

    def momentum_at(self, step: int, total_steps: int) -> float:
        """The update rate after optimizer step ``step`` (1-based) of ``total_steps``."""
        if not self.cosine:
            return self.momentum
        return cosine_momentum(self.momentum, self.end_momentum, step, total_steps)

    @staticmethod
    def _pairs(teacher: nn.Module, online: nn.Module, what: str) -> tuple[list[Tensor], list[Tensor]]:
        ours = list(getattr(teacher, what)())
        theirs = list(getattr(online, what)())
        if len(ours) != len(theirs) or any(a.shape != b.shape for a, b in zip(ours, theirs, strict=False)):
            raise ValueError("the momentum teacher no longer matches the online modules (changed after copying?)")
        return ours, theirs

    @torch.no_grad()
    def sync(self, online: nn.Module) -> None:
        """Copy ``online``'s parameters and buffers into the teacher (counts as one update)."""
        for what in ("parameters", "buffers"):
            ours, theirs = self._pairs(self.module, online, what)
            for a, b in zip(ours, theirs, strict=True):
                a.copy_(b)
        self.steps.add_(1)
        self._synced = True

    @torch.no_grad()
    def ensure_synced(self, online: nn.Module) -> None:
        """Copy ``online`` once, before the teacher is first used (no-op afterwards, and after resume)."""
        if self._synced:
            return
        if int(self.steps) == 0:  # one read of the counter per model, not per step
            self.sync(online)
        self._synced = True

    @torch.no_grad()
    def update(self, online: nn.Module, *, step: int, total_steps: int) -> float:
        """Fold ``online``'s weights in after optimizer step ``step``; returns the rate used.

        Args:
            online: The modules the teacher follows (same structure as at construction).
            step: Optimizer steps done in the whole run, this one included (1-based).
            total_steps: Optimizer steps of the whole run.

        """
        self.ensure_synced(online)
        m = self.momentum_at(step, total_steps)
        ours, theirs = self._pairs(self.module, online, "parameters")
        floats = [(a, b.detach()) for a, b in zip(ours, theirs, strict=True) if a.is_floating_point()]
        if floats:
            avg, src = [a for a, _ in floats], [b for _, b in floats]
            # MMEngine's order of operations: avg.mul_(1 - m).add_(src, alpha=m).
            torch._foreach_mul_(avg, 1.0 - m)
            torch._foreach_add_(avg, src, alpha=m)
        ours, theirs = self._pairs(self.module, online, "buffers")
        for a, b in zip(ours, theirs, strict=True):
            a.copy_(b)
        self.steps.add_(1)
        return m

    def extra_repr(self) -> str:
        """Settings shown by ``print(module)``."""
        schedule = f", cosine to {self.end_momentum}" if self.cosine else ""
        return f"momentum={self.momentum}{schedule}"
