"""Multi-view augmentation for self-supervised learning (MMPretrain's ``MultiView``).

Contrastive and self-distillation methods (MoCo, SimCLR, BYOL, ...) feed the model
several independently augmented views of each image. The loaders then yield
``(list of view batches, labels)``; views may differ in size (e.g. two global crops
and several small ones), each view index is batched on its own.

Two forms:

* one pipeline run ``num_views`` times: ``{type = "MultiView", num_views = 2,
  pipeline = [...]}``;
* MMPretrain's form, a list of pipelines with a view count each (BYOL's asymmetric
  views, multi-crop): ``{type = "MultiView", num_views = [1, 1], transforms = [[...],
  [...]]}``; the views come out pipeline by pipeline, ``num_views[i]`` from pipeline i.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseTransform, TransformRef, build_component
from pretrain.errors import PretrainError, SpecError

__all__ = ["MultiView"]

Count = Annotated[int, Field(ge=1)]


def _takes_generator(module: nn.Module) -> bool:
    import inspect

    try:
        return "generator" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return False


def _run(transforms: Sequence[nn.Module], images: Tensor, generator: torch.Generator | None) -> Tensor:
    """Apply ``transforms`` in order (each draws from ``generator`` if it takes one)."""
    for t in transforms:
        images = t(images, generator=generator) if _takes_generator(t) else t(images)
        if isinstance(images, list):
            raise PretrainError(f"{type(t).__name__} inside MultiView returned several views",
                                hint="MultiView cannot contain another MultiView.")
    return images


class MultiView(BaseTransform):
    """Return several views of every image, each from its own run of a pipeline.

    Args:
        num_views: Views per pipeline: one count with ``pipeline`` (or with a single
            entry of ``transforms``), or one count per entry of ``transforms``.
        pipeline: Transforms applied to make each view (random ones draw anew per view).
        transforms: MMPretrain's form: a list of pipelines (each a list of transform
            tables); pipeline i makes ``num_views[i]`` views. Use instead of ``pipeline``.

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {"pipeline": [{"type": "RandomCrop", "size": 8}], "num_views": 2}

    def __init__(
        self,
        *,
        num_views: Count | list[Count] = 2,
        pipeline: list[TransformRef] | None = None,
        transforms: list[list[dict[str, Any]]] | None = None,
    ) -> None:
        super().__init__()
        problems = list(self._check(num_views, transforms))
        if (pipeline is None) == (transforms is None):
            problems.append(("pipeline", "give either pipeline (one pipeline) or transforms (a list of "
                                         "pipelines), not both and not neither"))
        if pipeline is not None and isinstance(num_views, list) and len(num_views) != 1:
            problems.append(("num_views", "with one pipeline, give one view count"))
        if problems:
            raise ValueError("; ".join(f"{name}: {msg}" for name, msg in problems))
        pipelines = [pipeline] if pipeline is not None else transforms or []
        built = [[build_component("transform", t) for t in p] for p in pipelines]
        if any(isinstance(m, MultiView) for p in built for m in p):
            raise ValueError("MultiView cannot contain another MultiView")
        counts = [num_views] if isinstance(num_views, int) else list(num_views)
        if len(counts) == 1 and len(built) > 1:
            counts = counts * len(built)
        self.num_views = counts if len(counts) > 1 else counts[0]
        self.counts = counts
        self.pipelines = nn.ModuleList(nn.ModuleList(p) for p in built)

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """View counts match the pipelines; every table of ``transforms`` is a valid transform."""
        transforms = params.get("transforms")
        yield from cls._check(params.get("num_views", 2), transforms)
        for i, pipe in enumerate(transforms or []):
            for j, table in enumerate(pipe):
                try:
                    build_component("transform", table)
                except SpecError as exc:
                    for issue in exc.issues:
                        sub = str(issue.loc).removeprefix("transform")
                        yield f"transforms[{i}][{j}]{sub}", issue.msg
                except (PretrainError, ValueError, TypeError) as exc:
                    yield f"transforms[{i}][{j}]", str(exc)

    @staticmethod
    def _check(num_views: Any, transforms: Any) -> Iterable[tuple[str, str]]:
        if transforms is None:
            return
        if not transforms:
            yield "transforms", "needs at least one pipeline"
        if isinstance(num_views, list) and len(num_views) not in (1, len(transforms)):
            yield "num_views", (f"has {len(num_views)} counts but transforms has {len(transforms)} pipelines; "
                                "give one count per pipeline")

    @classmethod
    def views_from_params(cls, params: Mapping[str, Any]) -> int:
        """How many views a MultiView table makes (for spec checks, without building it)."""
        counts = params.get("num_views", 2)
        pipelines = len(params.get("transforms") or []) or 1
        if isinstance(counts, int):
            return counts * pipelines
        return sum(counts) if len(counts) > 1 else counts[0] * pipelines

    @property
    def total_views(self) -> int:
        """Views per image."""
        return sum(self.counts)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """(C, H, W) or (N, C, H, W) uint8 -> the list of views, pipeline by pipeline."""
        views: list[Tensor] = []
        for pipe, count in zip(self.pipelines, self.counts, strict=True):
            views.extend(_run(list(pipe), images, generator) for _ in range(count))
        return views

    def extra_repr(self) -> str:
        """Settings shown by ``print(module)``."""
        return f"num_views={self.num_views}"
