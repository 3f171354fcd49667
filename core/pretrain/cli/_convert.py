"""``pretrain convert-weights SRC DST``: another library's weights -> a safetensors checkpoint.

Converters are a registered kind (``pretrain.weight_converters`` entry points,
:class:`pretrain.components.BaseWeightConverter` subclasses), loaded through the
registry like every component: isolated imports, broken ones reported, the plugin
allow-list honoured, a row in ``pretrain list-components``. Each converter declares
the architectures it handles per source library; the command picks the one that
handles ``--from``/``--arch`` (``--family`` chooses when several do). The source file
is read without unpickling objects (``.safetensors``, or
``torch.load(weights_only=True)`` for ``.pth``/``.pt``/``.bin``) and the result is
written with safetensors. Torch is imported only when the command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pretrain.errors import PluginLoadError, PretrainError, did_you_mean

if TYPE_CHECKING:
    from torch import Tensor

    from pretrain.components import BaseWeightConverter

__all__ = [
    "add_parser",
    "check_backbone_keys",
    "convert_file",
    "find_converter",
    "load_state_dict",
    "run",
]

_STATE_DICT_KEYS = ("state_dict", "model", "module")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "convert-weights",
        help="convert torchvision/timm/... weights to a pretrain .safetensors checkpoint",
        description=(
            "Convert another library's state dict (.pth/.pt/.bin read with "
            "torch.load(weights_only=True), or .safetensors) to the keys of pretrain's "
            "models (backbone.*, head.*) and write it as .safetensors. `pretrain "
            "list-components --kind weight_converter` lists the converters; `pretrain "
            "describe NAME` shows the architectures one handles."
        ),
    )
    p.add_argument("src", type=Path, help="source weights (.pth, .pt, .bin or .safetensors)")
    p.add_argument("dst", type=Path, help="output file (.safetensors)")
    p.add_argument(
        "--from", dest="source", required=True, metavar="SOURCE",
        help="library the weights come from: torchvision, timm, or any source an installed "
        "converter declares",
    )
    p.add_argument(
        "--arch", required=True,
        help="architecture name as the source library spells it, e.g. resnet50, "
        "mobilenet_v2, vit_b_16 (torchvision) or resnet50d, vit_base_patch16_224 (timm)",
    )
    p.add_argument(
        "--family", help="converter to use (its entry-point name); default: the one that handles --arch"
    )
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.set_defaults(run=run)


def find_converter(source: str, arch: str, family: str | None = None) -> tuple[str, BaseWeightConverter]:
    """The converter (family name, instance) that handles ``source``/``arch``.

    Raises:
        PretrainError: No converter handles it (the message lists what each one
            handles), several do (pass ``family``), or ``family`` is unknown or broken.

    """
    from pretrain.registry.registry import get_registry

    registry = get_registry()
    records = registry.entries("weight_converter")
    if family is not None:
        records = [r for r in records if family in (r.name, r.qualified_name)]
        if not records:
            installed = [r.name for r in registry.entries("weight_converter")]
            raise PretrainError(
                f"no weight converter is called {family!r}{did_you_mean(family, installed)}",
                hint=f"Installed converters: {', '.join(installed) or 'none'}.",
            )
    usable: list[tuple[str, Any]] = []
    broken: list[str] = []
    supported: list[str] = []
    for record in records:
        try:
            cls = registry.load(record)
        except PluginLoadError as exc:
            broken.append(exc.message)
            continue
        if cls.handles(source, arch):
            usable.append((record.qualified_name, cls))
        first_line = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        supported.append(f"{record.name} ({', '.join(cls.architectures)}): {first_line}".rstrip(": "))
    if len(usable) == 1:
        name, cls = usable[0]
        return name.rpartition(":")[2], cls()
    if len(usable) > 1:
        names = ", ".join(name for name, _ in usable)
        raise PretrainError(
            f"several weight converters handle {source} arch {arch!r}: {names}.",
            hint="Pass --family NAME to choose one.",
        )
    sources = sorted({src for record in records for src in _declared_sources(registry, record)})
    where = "" if source in sources else f" (known sources: {', '.join(sources) or 'none'})"
    message = f"no installed weight converter handles {source} arch {arch!r}{where}."
    if broken:
        message += " Broken converters that might: " + "; ".join(broken)
    raise PretrainError(
        message,
        hint="Installed converters (sources): " + "; ".join(supported)
        + ". Check --from/--arch (`pretrain describe NAME` lists a converter's architecture "
        "patterns), or install a plugin that converts this architecture.",
    )


def _declared_sources(registry: Any, record: Any) -> list[str]:
    try:
        return list(registry.load(record).architectures)
    except PluginLoadError:
        return []


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    import torch

    # Training checkpoints nest the weights: {"state_dict": {...}, "epoch": ...}.
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise PretrainError(
            f"{path} does not hold a state dict (a mapping of names to tensors).",
            hint="Save the weights with torch.save(model.state_dict(), path).",
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise PretrainError(
            f"{path}: {len(bad)} entr{'y is' if len(bad) == 1 else 'ies are'} not tensors "
            f"({', '.join(bad[:5])}).",
            hint="Save the weights with torch.save(model.state_dict(), path).",
        )
    state = {str(k): v for k, v in obj.items()}
    # DistributedDataParallel checkpoints prefix every key with "module.".
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_state_dict(path: Path) -> dict[str, Tensor]:
    """Read tensors from ``path`` without unpickling arbitrary objects.

    Raises:
        PretrainError: Missing file, unknown extension, or content that is not tensors.

    """
    import pickle

    import torch

    from pretrain.assembly.weights_file import looks_like_torch_save, read_safetensors
    from pretrain.spec.init_rules import checkpoint_problem

    if not path.exists() and not path.is_symlink():
        raise PretrainError(f"{path}: no such file.", hint="Check the SRC path.")
    problem = checkpoint_problem(str(path))  # a directory, a device, a symlink loop
    if problem is not None:
        raise PretrainError(f"SRC: {problem}.", hint="Check the SRC path.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _unwrap(read_safetensors(path)[0], path)  # a damaged file is a CheckpointError
    if suffix not in _TORCH_SUFFIXES:
        raise PretrainError(
            f"{path}: unknown weight file type {suffix or '(no extension)'!r}.",
            hint=f"Use .safetensors or one of {', '.join(_TORCH_SUFFIXES)}.",
        )
    if not looks_like_torch_save(path):
        raise PretrainError(
            f"{path} is not a readable PyTorch checkpoint (it is neither a torch.save zip archive "
            "nor a pickle).",
            hint="Pass the weights file as downloaded; it may be truncated or another kind of file.",
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PretrainError(
            f"{path} contains Python objects other than tensors, and pretrain never "
            f"unpickles them ({str(exc).splitlines()[0]}).",
            hint="Load it in Python from a source you trust and re-save "
            "torch.save(model.state_dict(), path), or export it as .safetensors.",
        ) from exc
    except Exception as exc:  # not a torch checkpoint at all: torch raises RuntimeError, EOFError, ...
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PretrainError(
            f"{path} is not a readable PyTorch checkpoint ({why}).",
            hint="Pass the weights file as downloaded (torch.save output or .safetensors); it may be "
            "truncated or another kind of file.",
        ) from exc
    return _unwrap(obj, path)


def _detach_for_saving(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # safetensors refuses tensors that share memory; clone the (rare) aliases.
    seen: set[tuple[int, int]] = set()
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        t = tensor.detach().contiguous()
        ident = (t.untyped_storage().data_ptr(), int(t.storage_offset()))
        if t.numel() and ident in seen:
            t = t.clone()
        seen.add(ident)
        out[key] = t
    return out


def check_backbone_keys(converted: Mapping[str, Tensor], spec: Mapping[str, Any]) -> None:
    """Compare the ``backbone.*`` tensors with a ``spec`` backbone built on the meta device.

    Catches truncated or mismatched checkpoints at conversion time rather than
    when a training run loads them.

    Raises:
        PretrainError: Keys missing, unexpected or of the wrong shape.

    """
    import torch

    from pretrain.assembly.assemble import build_from_spec

    with torch.device("meta"):
        backbone = build_from_spec("backbone", spec)
    expected = {f"backbone.{k}": tuple(v.shape) for k, v in backbone.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in converted.items() if k.startswith("backbone.")}
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {', '.join(keys[:5])}{more}")
        raise PretrainError(
            f"the converted weights do not fit backbone {dict(spec)}: {'; '.join(parts)}.",
            hint="Check --arch: the checkpoint is probably a different variant or depth.",
        )


def convert_file(
    src: Path, dst: Path, *, source: str, arch: str, family: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert ``src`` to ``dst`` and return a summary (the CLI prints it).

    Args:
        src: Source weights file.
        dst: Output ``.safetensors`` file.
        source: Library the weights come from (``torchvision``, ``timm``, ...).
        arch: Architecture name in the source library.
        family: Converter (entry-point name); the one that handles ``arch`` when ``None``.
        overwrite: Replace an existing ``dst``.

    Returns:
        ``family``, ``tensors_in``, ``tensors_out``, ``parameters`` (elements of the
        converted tensors), ``groups`` (tensor count per top-level prefix),
        ``backbone`` (spec table of the matching backbone, when the converter knows it)
        and ``head`` (``num_classes``/``in_channels`` of ``head.fc``, when present).

    Raises:
        PretrainError: Any user-fixable problem (paths, arch, keys).

    """
    from safetensors.torch import save_file

    if dst.suffix.lower() != ".safetensors":
        raise PretrainError(
            f"{dst}: the output must be a .safetensors file.", hint="Rename DST to *.safetensors."
        )
    if dst.exists() and not overwrite:
        raise PretrainError(f"{dst} already exists.", hint="Pass --force to overwrite it.")
    family, converter = find_converter(source, arch, family)
    state = load_state_dict(src)
    converted = converter.convert(state, source=source, arch=arch)
    groups: dict[str, int] = {}
    for key in converted:
        top = key.split(".", 1)[0]
        groups[top] = groups.get(top, 0) + 1
    summary: dict[str, Any] = {
        "family": family,
        "tensors_in": len(state),
        "tensors_out": len(converted),
        "parameters": sum(t.numel() for t in converted.values()),
        "groups": groups,
        "backbone": None,
        "head": None,
    }
    # None when the arch name does not pin the size (e.g. the generic `vit`).
    summary["backbone"] = converter.backbone_spec(source, arch)
    if summary["backbone"] is not None:
        check_backbone_keys(converted, summary["backbone"])
    # The classifier layer: LinearClsHead's `fc`, VisionTransformerClsHead's `layers.head`.
    fc = next((converted[k] for k in ("head.fc.weight", "head.layers.head.weight") if k in converted), None)
    if fc is not None and fc.dim() == 2:
        summary["head"] = {"num_classes": int(fc.shape[0]), "in_channels": int(fc.shape[1])}
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        _detach_for_saving(converted),
        str(dst),
        metadata={"format": "pt", "pretrain.source": source, "pretrain.arch": arch,
                  "pretrain.family": family, "pretrain.converted_from": src.name},
    )
    return summary


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def run(args: argparse.Namespace) -> int:
    """Convert the weights and print a summary."""
    from rich.markup import escape
    from rich.table import Table

    from pretrain.cli._console import console

    summary = convert_file(
        args.src, args.dst, source=args.source, arch=args.arch, family=args.family,
        overwrite=args.force,
    )
    table = Table(title=f"converted {escape(args.source)} {escape(args.arch)}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("source", escape(str(args.src)))
    table.add_row("output", escape(str(args.dst)))
    table.add_row("converter", escape(summary["family"]))
    table.add_row("tensors", f"{summary['tensors_in']} → {summary['tensors_out']}")
    for group, count in summary["groups"].items():
        table.add_row(f"  {escape(group)}.*", str(count))
    table.add_row("elements (incl. BN statistics)", f"{summary['parameters']:,}")
    console.print(table)
    lines = []
    if summary["backbone"]:
        lines.append("[model.backbone]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in summary["backbone"].items()]
    if summary["head"]:
        lines.append("[model.head]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in summary["head"].items()]
    if lines:
        console.print("\nMatching spec tables (load with a Pretrained init rule on the model):")
        console.print(escape("\n".join(lines)))
        console.print(
            escape(f'[[model.init]]\ntype = "Pretrained"\ncheckpoint = "{args.dst}"')
        )
    return 0
