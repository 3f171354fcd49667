"""The ``[data]`` spec table: options, and a dataset + transform pipeline per split (torch-free).

A spec's data table, in full::

    [data]
    batch_size = 64          # per process
    val_batch_size = 256     # default: batch_size
    num_workers = 0          # DataLoader workers (datasets that are not kept in memory)
    image_size = 32          # size the pipelines must produce (checked before training)
    in_memory = "auto"       # true | false | "auto": one uint8 tensor (on the GPU on CUDA)
    drop_last = false        # drop each epoch's last incomplete training batch

    [data.train]
    type = "Digits"
    split = "train"
    pipeline = [{type = "RandomCrop", size = 32, padding = 2}, {type = "RandomFlip"}]

    [data.val]
    type = "Digits"
    split = "val"

    [data.gallery]           # retrieval and kNN: what the val queries are ranked against
    type = "Digits"          # a dataset (through its own pipeline) ...
    split = "train"
    # embeddings = "gallery.safetensors"   # ... or features saved by `pretrain embed`

Validation resolves the dataset and transform types through the registry and checks
their fields; :mod:`pretrain.engine.data` turns the validated section into loaders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pretrain.spec.context import ValidationContext
from pretrain.spec.values import MISSING

__all__ = [
    "SPLITS", "DataOptions", "DataSection", "DatasetSpec", "GalleryFile", "json_schema", "validate_data_section",
]

#: Sanity bounds (far above real use; a typo such as `batch_size = 1e9` fails validation).
MAX_BATCH = 65_536
MAX_WORKERS = 256
MAX_IMAGE_SIZE = 16_384
MAX_IN_MEMORY_MB = 2**24  # 16 TiB

class DataOptions(BaseModel):
    """Plain fields of the ``[data]`` table (``train``/``val`` are component tables)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: Annotated[int, Field(gt=0, le=MAX_BATCH)] = Field(64, description="Images per batch per process.")
    val_batch_size: Annotated[int, Field(gt=0, le=MAX_BATCH)] | None = Field(
        None, description="Images per evaluation batch per process (default: batch_size)."
    )
    num_workers: Annotated[int, Field(ge=0, le=MAX_WORKERS)] = Field(
        0, description="DataLoader worker processes for datasets not kept in memory."
    )
    image_size: Annotated[int, Field(gt=0, le=MAX_IMAGE_SIZE)] | None = Field(
        None,
        description="Height and width the pipelines must produce (checked before training "
        "and used by `pretrain validate`'s shape check).",
    )
    in_memory: bool | Literal["auto"] = Field(
        "auto",
        description="Keep the decoded dataset as one uint8 tensor on the training device "
        "and augment whole batches there. auto: when the images share one size and fit "
        "in in_memory_max_mb.",
    )
    in_memory_max_mb: Annotated[int, Field(gt=0, le=MAX_IN_MEMORY_MB)] = Field(
        2048, description="Largest decoded dataset (MiB) that in_memory = 'auto' keeps in memory."
    )
    drop_last: bool = Field(False, description="Drop each epoch's incomplete last training batch.")


#: The splits a ``[data]`` table may hold (``gallery``: retrieval and kNN).
SPLITS = ("train", "val", "gallery")
_SPLIT_KEYS = ("type", "pipeline")


@dataclass(frozen=True)
class DatasetSpec:
    """One of ``[data.train]``/``[data.val]``: a dataset and its pipeline.

    Attributes:
        dataset: A validated ``ComponentNode``, or an already built dataset.
        pipeline: Validated transform nodes or built transform modules, in order.
        loc: Spec path, for error messages.

    """

    dataset: Any
    pipeline: tuple[Any, ...] = ()
    loc: str = "data"


@dataclass(frozen=True)
class GalleryFile:
    """``[data.gallery] embeddings = "file"``: a gallery saved by ``pretrain embed``.

    Attributes:
        path: The ``.safetensors`` file (``features`` (M, D), optional ``labels`` (M,)).
        loc: Spec path, for error messages.

    """

    path: str
    loc: str = "data.gallery"


@dataclass(frozen=True)
class DataSection:
    """The validated ``[data]`` table.

    Attributes:
        options: Batch size, workers, in-memory policy, ...
        train: Training dataset and pipeline, if given.
        val: Validation dataset and pipeline, if given (the queries of retrieval and kNN).
        gallery: What retrieval and kNN rank: a dataset and pipeline, or a saved
            embeddings file; None (kNN then uses the training set through the
            validation pipeline).

    """

    options: DataOptions
    train: DatasetSpec | None = None
    val: DatasetSpec | None = None
    gallery: DatasetSpec | GalleryFile | None = None


def _validate_split(value: Any, ctx: ValidationContext, loc: str) -> DatasetSpec | None:
    if not isinstance(value, Mapping):
        ctx.add(loc, "expected a table with a 'type' (a dataset) and an optional 'pipeline' "
                "list of transforms, e.g. {type = \"Digits\", split = \"train\"}")
        return None
    table = dict(value)
    pipeline = table.pop("pipeline", [])
    before = len(ctx.issues)
    nodes = ctx.components("transform", pipeline, f"{loc}.pipeline")
    node = ctx.component("dataset", table, loc)
    if node is None or len(ctx.issues) > before:
        return None
    return DatasetSpec(node, tuple(nodes), loc)


def _validate_gallery(value: Any, ctx: ValidationContext, loc: str) -> DatasetSpec | GalleryFile | None:
    if isinstance(value, Mapping) and "embeddings" in value:
        extra = sorted(str(k) for k in value if k != "embeddings")
        path = value["embeddings"]
        if extra:
            ctx.add(loc, f"a gallery is a dataset table or an embeddings file, not both: remove {', '.join(extra)} "
                    "or embeddings")
        elif not isinstance(path, str) or not path:
            ctx.add(f"{loc}.embeddings", "must be the path of a .safetensors file written by `pretrain embed`")
        elif not Path(path).expanduser().is_file():
            ctx.add(f"{loc}.embeddings", f"file {path!r} does not exist; write one with `pretrain embed SPEC "
                    "--weights W --split gallery -o FILE`, or give a dataset table instead")
        else:
            return GalleryFile(str(Path(path).expanduser()), loc)
        return None
    return _validate_split(value, ctx, loc)


def _channels_agree(splits: Mapping[str, Any], ctx: ValidationContext, loc: str) -> None:
    """Queries and gallery are compared feature by feature, so they must be images of one kind."""
    val, gallery = splits.get("val"), splits.get("gallery")
    if not (isinstance(val, DatasetSpec) and isinstance(gallery, DatasetSpec)):
        return
    ch_val, ch_gallery = (getattr(s.dataset, "params", {}).get("channels") for s in (val, gallery))
    if ch_val is not None and ch_gallery is not None and ch_val != ch_gallery:
        ctx.add(f"{loc}.gallery.channels", f"is {ch_gallery} but data.val has channels = {ch_val}; queries and "
                "gallery must have the same channels (remove both to follow the model's in_channels)")


def validate_data_section(raw: Any, ctx: ValidationContext, loc: str = "data") -> DataSection | None:
    """Validate a spec's ``[data]`` table, recording every problem in ``ctx``.

    Args:
        raw: The table as parsed from TOML/JSON.
        ctx: Validation context (collects issues; resolves component types).
        loc: Spec path of the table.

    Returns:
        The validated section, or None when anything is wrong (see ``ctx.issues``).

    """
    if not isinstance(raw, Mapping):
        ctx.add(loc, f"expected a table (batch_size, train, val, ...), got {type(raw).__name__}")
        return None
    before = len(ctx.issues)
    options: DataOptions | None = None
    plain = {k: v for k, v in raw.items() if k not in SPLITS}
    try:
        options = DataOptions.model_validate(plain)
    except ValidationError as exc:
        ctx.add_pydantic(exc, loc, DataOptions, known_fields=[*DataOptions.model_fields, *SPLITS])
    ctx.check_values(plain, MISSING if options is None else options, loc)
    splits: dict[str, Any] = {
        name: (_validate_gallery if name == "gallery" else _validate_split)(raw[name], ctx, f"{loc}.{name}")
        for name in SPLITS if name in raw
    }
    _channels_agree(splits, ctx, loc)
    if not any(name in raw for name in ("train", "val")):
        ctx.add(loc, "no dataset: add [data.train] and/or [data.val] tables, "
                "e.g. [data.train] type = \"Digits\"")
    if options is None or len(ctx.issues) > before:
        return None
    return DataSection(options, splits.get("train"), splits.get("val"), splits.get("gallery"))


def json_schema() -> dict[str, Any]:
    """JSON Schema of the ``[data]`` table for ``pretrain schema``.

    ``train``/``val`` are a ``oneOf`` over the installed datasets, each extended with
    ``pipeline`` (items refer to ``#/$defs/transform``, which the spec schema defines).
    Broken dataset plugins are left out.
    """
    from pretrain.errors import PluginLoadError
    from pretrain.registry.registry import get_registry
    from pretrain.registry.schema import component_schema

    schema = DataOptions.model_json_schema(ref_template="#/$defs/{model}")
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    pipeline = {"type": "array", "items": {"$ref": "#/$defs/transform"},
                "description": "Transforms applied in order to every image."}
    registry = get_registry()
    variants, mapping = [], {}
    for record in registry.entries("dataset"):
        try:
            cls = registry.load(record)
        except PluginLoadError:
            continue
        variant = component_schema(cls, "dataset", record.name).json_schema(record.qualified_name)
        defs.update(variant.pop("$defs", {}))
        variant["properties"]["pipeline"] = pipeline
        name = f"data_{record.qualified_name.replace(':', '__')}"
        defs[name] = variant
        variants.append({"$ref": f"#/$defs/{name}"})
        mapping[record.name] = f"#/$defs/{name}"
    split: dict[str, Any] = {
        "description": "A dataset table (`type` and its fields) plus an optional `pipeline`.",
        "oneOf": variants or [{"not": {}}],
        "discriminator": {"propertyName": "type", "mapping": mapping},
    }
    embeddings = {"type": "object", "additionalProperties": False, "required": ["embeddings"],
                  "properties": {"embeddings": {"type": "string",
                                                "description": "features saved by `pretrain embed`"}}}
    schema["properties"].update({"train": split, "val": split,
                                 "gallery": {"oneOf": [split, embeddings],
                                             "description": "The gallery of retrieval and kNN."}})
    schema["title"] = "data"
    return schema


