"""Per-iteration learning-rate schedules as pure functions of the optimizer step.

``factor(step)`` is the multiplier of every group's ``base_lr`` for the optimizer
step with that index (0-based). Being stateless, a schedule needs nothing in a
checkpoint but the step counter, and resuming cannot drift.

Semantics match MMPretrain's usual ``LinearLR`` warm-up followed by
``CosineAnnealingLR(begin=warmup)`` / ``StepLR`` / ``MultiStepLR`` with
``convert_to_iter_based=True``: the warm-up ramps linearly from
``warmup_start_factor`` to 1; cosine anneals over the steps after the warm-up;
step decays happen at absolute epoch boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pretrain.spec.sections import (
    ConstantSchedule,
    CosineSchedule,
    MultiStepSchedule,
    ScheduleConfig,
    StepSchedule,
)

__all__ = ["LRSchedule", "build_schedule"]


@dataclass(frozen=True)
class LRSchedule:
    """A learning-rate factor per optimizer step.

    Attributes:
        cfg: The validated ``[train.schedule]`` table.
        total_steps: Optimizer steps in the whole run.
        steps_per_epoch: Optimizer steps per epoch (converts epochs to steps).
        warmup_steps: Length of the linear warm-up in steps.

    """

    cfg: ScheduleConfig
    total_steps: int
    steps_per_epoch: int
    warmup_steps: int

    def factor(self, step: int) -> float:
        """LR multiplier for optimizer step ``step`` (0-based)."""
        cfg = self.cfg
        warm = 1.0
        if step < self.warmup_steps:
            start = cfg.warmup_start_factor
            warm = start + (1.0 - start) * step / self.warmup_steps
        if isinstance(cfg, ConstantSchedule):
            main = 1.0
        elif isinstance(cfg, CosineSchedule):
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, max(0.0, (step - self.warmup_steps) / span))
            main = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        elif isinstance(cfg, StepSchedule):
            main = cfg.gamma ** (step // (cfg.step_epochs * self.steps_per_epoch))
        elif isinstance(cfg, MultiStepSchedule):
            passed = sum(step >= m * self.steps_per_epoch for m in cfg.milestones)
            main = cfg.gamma**passed
        else:  # pragma: no cover - closed union
            raise AssertionError(cfg)
        return warm * main


def build_schedule(cfg: ScheduleConfig, *, total_steps: int, steps_per_epoch: int) -> LRSchedule:
    """Resolve warm-up epochs to steps and return the schedule.

    Args:
        cfg: The ``[train.schedule]`` table.
        total_steps: Optimizer steps in the run (``epochs * steps_per_epoch``, or ``max_steps``).
        steps_per_epoch: Optimizer steps per epoch.

    """
    by_epochs = round(cfg.warmup_epochs * steps_per_epoch)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else by_epochs
    return LRSchedule(cfg, max(1, total_steps), max(1, steps_per_epoch), min(warmup, total_steps))
