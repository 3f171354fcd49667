"""What a model needs from its data, checked from the spec alone (no data loaded, nothing built).

Multi-view algorithms declare their needs through a small duck-typed protocol on the
model class (the built-in ``MultiViewSelfSupervisor`` implements it, and so may any
third-party model)::

    @classmethod
    def data_issues(cls, params, *, split, views, batch_size, world_size=1)
        -> Iterable[tuple[spec path, message]]

and transforms that multiply a sample into views declare how many from their spec
table (``MultiView``)::

    @classmethod
    def views_from_params(cls, params) -> int

This module counts the views each of ``data.train`` / ``data.val`` produces, passes
the per-process batch sizes and the number of processes, and turns the answers into
spec issues whose paths point at the table to change: ``data.val.pipeline`` when a
split has no view-making transform, ``data.train.pipeline[0].num_views`` when it has
one with too few views, ``model.queue_len`` for MoCo's queue.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pretrain.errors import SpecIssue
from pretrain.spec.validate import ComponentNode, ValidatedSpec

__all__ = ["SplitViews", "data_requirement_issues", "split_views", "world_size_from_env"]


@dataclass(frozen=True)
class SplitViews:
    """How many views per sample a split's pipeline makes, and which transform makes them."""

    views: int
    index: int | None  # position of the view-making transform in the pipeline, if any
    node: ComponentNode | None


def split_views(pipeline: Sequence[Any]) -> SplitViews:
    """Count the views a pipeline (validated transform nodes) makes per sample (1 without any)."""
    views, index, found = 1, None, None
    for i, node in enumerate(pipeline):
        if not isinstance(node, ComponentNode):
            continue
        counter = getattr(node.cls, "views_from_params", None)
        if callable(counter):
            views *= int(counter(node.params))
            if index is None:
                index, found = i, node
    return SplitViews(views, index, found)


def world_size_from_env() -> int:
    """Processes of this run: ``WORLD_SIZE`` under torchrun, else 1 (``pretrain validate``)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def data_requirement_issues(spec: ValidatedSpec, *, world_size: int | None = None) -> dict[str, list[SpecIssue]]:
    """The model's ``data_issues`` for each split of ``[data]``, keyed by split name.

    Args:
        spec: A validated spec.
        world_size: Processes the global batch is spread over (default: ``WORLD_SIZE`` or 1).

    Returns:
        ``{"train": [...], "val": [...]}`` (splits without issues are left out).

    """
    data = spec.sections.get("data")
    check = getattr(spec.model.cls, "data_issues", None)
    if data is None or not callable(check):
        return {}
    world = world_size if world_size is not None else world_size_from_env()
    options = data.options
    found: dict[str, list[SpecIssue]] = {}
    for split in ("train", "val"):
        dataset = getattr(data, split, None)
        if dataset is None:
            continue
        counted = split_views(dataset.pipeline)
        batch = options.batch_size if split == "train" else (options.val_batch_size or options.batch_size)
        issues = []
        for loc, msg in check(spec.model.params, split=split, views=counted.views, batch_size=batch,
                              world_size=world):
            issues.append(SpecIssue(_refine(str(loc), split, counted), str(msg)))
        if issues:
            found[split] = issues
    return found


def _refine(loc: str, split: str, counted: SplitViews) -> str:
    """Point a split-level path at the view-making transform's ``num_views`` when there is one."""
    if loc == f"data.{split}.pipeline" and counted.index is not None and counted.node is not None:
        field = "num_views" if "num_views" in counted.node.schema.model.model_fields else ""
        return counted.node.loc + (f".{field}" if field else "")
    return loc
