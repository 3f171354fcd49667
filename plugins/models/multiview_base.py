"""Shared base of the multi-view (contrastive and siamese) self-supervised algorithms.

It holds what SimCLR, MoCo, MoCo v3, BYOL, SimSiam and Barlow Twins have in common:
several augmented views per sample, the online encoder ``neck(backbone(x))``, an
optional momentum teacher updated after each optimizer step, and the facts a spec
validator needs about the data the algorithm consumes:

* :attr:`MultiViewSelfSupervisor.num_views` / :meth:`required_views`: views per
  sample every batch must carry (``MultiView`` in ``data.train`` *and* ``data.val``,
  whose ``val_loss`` runs the same ``loss``);
* :meth:`data_issues`: every problem with a split's view count and batch size for
  given model fields, as ``(spec path, message)`` pairs (MoCo adds its queue check).

Third-party multi-view algorithms can subclass it or implement the same class
attributes; the checks are duck-typed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from pretrain.errors import PretrainError
from pretrain.selfsup import BaseSelfSupervisor
from pretrain_builtins.layers.momentum import MomentumTeacher

__all__ = ["MultiViewSelfSupervisor", "check_width"]


def check_width(what: str, width: int | None, other: str, expected: int | None, fix: str) -> None:
    """Raise one clear error when two components disagree on a feature width.

    Raises:
        PretrainError: ``width`` and ``expected`` are both known and differ.

    """
    if width is not None and expected is not None and width != expected:
        raise PretrainError(f"{what} is {width}, but {other} is {expected}", hint=fix)


class MultiViewSelfSupervisor(BaseSelfSupervisor):
    """Base of algorithms that compare several views of each image (see the module docs).

    Subclasses implement ``loss``; those with a momentum teacher name its attribute in
    :attr:`teacher_attr`, and :meth:`after_optimizer_step` updates it.
    """

    #: Views per sample each batch must carry (the first ``num_views`` are used).
    num_views: ClassVar[int] = 2
    #: Attribute holding the :class:`MomentumTeacher` (None: no teacher).
    teacher_attr: ClassVar[str | None] = None

    # ------------------------------------------------------------------ what the data must be

    @classmethod
    def required_views(cls, params: Mapping[str, Any]) -> int:
        """Views per sample this algorithm needs with these model fields (train and val)."""
        return cls.num_views

    @classmethod
    def data_issues(
        cls, params: Mapping[str, Any], *, split: str, views: int, batch_size: int, world_size: int = 1
    ) -> Iterable[tuple[str, str]]:
        """Problems of a data split for this algorithm, as ``(spec path, message)`` pairs.

        Args:
            params: The model's validated plain fields.
            split: ``train`` or ``val``.
            views: Views per sample the split's pipeline produces (1 without ``MultiView``).
            batch_size: Samples per batch and process.
            world_size: Number of processes (the global batch is ``batch_size * world_size``).

        """
        need = cls.required_views(params)
        if views < need:
            yield f"data.{split}.pipeline", (
                f"{cls.__name__} compares {need} views of every image but the pipeline makes {views}; "
                f"wrap the augmentations in MultiView with num_views = {need} (or a list of "
                f"pipelines whose num_views add up to {need})"
            )

    # ------------------------------------------------------------------ encoders

    def online(self) -> nn.Sequential:
        """The online encoder ``neck(backbone(x))`` as one module (not registered twice)."""
        assert self.neck is not None
        return nn.Sequential(self.backbone, self.neck)

    def project(self, x: Tensor) -> Tensor:
        """Online projection (N, D) of normalised images."""
        assert self.neck is not None
        out: Tensor = self.neck(self.backbone(x))[0]
        return out

    def teacher(self) -> MomentumTeacher | None:
        """The momentum teacher, if the algorithm has one."""
        return getattr(self, self.teacher_attr) if self.teacher_attr else None

    @torch.no_grad()
    def teacher_project(self, x: Tensor) -> Tensor:
        """Teacher projection (N, D) of normalised images (no gradient)."""
        teacher = self.teacher()
        assert teacher is not None
        teacher.ensure_synced(self.online())
        out: Tensor = teacher(x)[0]
        return out

    def after_optimizer_step(self, *, step: int, total_steps: int) -> None:
        """Fold the online weights into the momentum teacher (called by the trainer).

        Args:
            step: Optimizer steps done in the whole run, this one included (1-based).
            total_steps: Optimizer steps of the whole run (the cosine schedule's length).

        """
        teacher = self.teacher()
        if teacher is not None:
            teacher.update(self.online(), step=step, total_steps=total_steps)

    # ------------------------------------------------------------------ inputs

    def input_views(self, inputs: Tensor | Sequence[Tensor]) -> list[Tensor]:
        """The first :attr:`num_views` views, normalised (each (N, C, H, W))."""
        return [self.preprocess(v) for v in self.views(inputs, self.num_views)]

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        """Conformance-kit input: ``num_views`` raw 0..255 views of 16×16 images, no labels."""
        c = self.in_channels
        return ([torch.rand(batch_size, c, 16, 16) * 255 for _ in range(self.num_views)], None)
