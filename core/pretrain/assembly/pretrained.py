"""Loading pretrained weights (the ``Pretrained`` init rule).

Reads ``.safetensors`` (verifying the checksum pretrain writes, like ``pretrain eval``)
or ``.pth``/``.pt`` with ``torch.load(weights_only=True)`` (never unpickling objects),
applies ``key_map`` and ``prefix``, runs the component's ``load_state_dict``
pre-hooks (e.g. ViT position-embedding resizing), prints a table of loaded / missing
/ unexpected / shape-mismatched keys, and under ``strict`` refuses any mismatch
before touching the module. Integer or boolean tensors for floating-point weights,
and NaN or infinite values, are errors naming the first such tensor.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pretrain.assembly.weights_file import (
    CheckpointError,
    check_tensors,
    looks_like_torch_save,
    read_safetensors,
)
from pretrain.errors import PretrainError
from pretrain.spec.init_rules import checkpoint_problem

if TYPE_CHECKING:
    from rich.console import Console
    from torch import Tensor, nn

    from pretrain.spec.init_rules import Pretrained

__all__ = ["LoadReport", "load_pretrained"]

_log = logging.getLogger("pretrain.init")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did.

    Attributes:
        checkpoint: The file read.
        loaded: Component keys that were filled from the checkpoint.
        missing: Component keys the checkpoint lacks.
        unexpected: Checkpoint keys (after ``key_map``/``prefix``) the component lacks.
        mismatched: Keys present in both whose shapes differ.
        shapes: ``key -> (checkpoint shape, component shape)`` for ``mismatched``.

    """

    checkpoint: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        """True when every key matched."""
        return not (self.missing or self.unexpected or self.mismatched)


def _read_checkpoint(path: Path, rule: Pretrained, loc: str) -> dict[str, Tensor]:
    import torch

    problem = checkpoint_problem(rule.checkpoint)
    if problem is not None:
        raise PretrainError(f"{loc}: the pretrained checkpoint {problem}.",
                            hint="Fix `checkpoint` (relative paths are resolved from the current directory).")
    suffix = path.suffix.lower()
    if path.name.endswith(".index.json"):  # a sharded (FSDP) checkpoint: merge the ranks' pieces
        from pretrain.assembly.shards import read_sharded_index

        state = read_sharded_index(path)
        return {k: v.to(rule.map_location) for k, v in state.items()}
    if suffix == ".safetensors":
        try:
            state, _ = read_safetensors(path)  # the checksum pretrain writes is verified here
        except CheckpointError as exc:
            raise PretrainError(f"{loc}: {exc.message}", hint=exc.hint) from exc
        if rule.map_location != "cpu":
            state = {k: v.to(rule.map_location) for k, v in state.items()}
        return state
    if suffix in {".pth", ".pt", ".bin", ".ckpt"}:
        if not looks_like_torch_save(path):
            raise PretrainError(
                f"{loc}: {str(path)!r} is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle).",
                hint="Point `checkpoint` at the weights file as downloaded or saved; it may be truncated "
                "or another kind of file.",
            )
        try:
            obj = torch.load(path, map_location=rule.map_location, weights_only=True)
        except Exception as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PretrainError(
                f"{loc}: cannot read {str(path)!r} as a tensors-only checkpoint "
                f"(torch.load(weights_only=True) refused it: {why}).",
                hint="Pickled Python objects are never loaded; convert the file with "
                "`pretrain convert-weights` or save a plain state_dict / .safetensors.",
            ) from exc
        # MMEngine/timm checkpoints nest the weights under "state_dict" or "model".
        for key in ("state_dict", "model"):
            if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise PretrainError(f"{loc}: {str(path)!r} does not hold a state dict of tensors.",
                                hint="Save the weights with torch.save(model.state_dict(), path) or as .safetensors.")
        return dict(obj)
    raise PretrainError(
        f"{loc}: unsupported checkpoint format {path.suffix!r} ({str(path)!r}).",
        hint="Use a .safetensors file (or .pth/.pt holding a plain state_dict, or the *.index.json of a "
        "sharded checkpoint).",
    )


def _remap(state: dict[str, Tensor], rule: Pretrained, loc: str, path: str) -> dict[str, Tensor]:
    patterns = [(re.compile(p), r) for p, r in rule.key_map]
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = key
        for pattern, repl in patterns:
            new = pattern.sub(repl, new)
        if not new:
            continue  # mapped to "": dropped on purpose
        if new in out:
            raise PretrainError(
                f"{loc}: key_map sends two checkpoint keys to {new!r} (one is {key!r}).",
                hint="Make the key_map rules injective.",
            )
        out[new] = value
    if rule.prefix is None:
        return out
    selected = {k[len(rule.prefix) :]: v for k, v in out.items() if k.startswith(rule.prefix)}
    if not selected:
        heads = sorted({k.split(".", 1)[0] + "." for k in out})
        raise PretrainError(
            f"{loc}: no checkpoint key starts with prefix {rule.prefix!r} in {path!r}. "
            f"Top-level prefixes present: {', '.join(map(repr, heads[:20])) or '(none)'}.",
            hint="Set `prefix` to one of those (or leave it out to load the whole file).",
        )
    return selected


def _run_pre_hooks(module: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Run the modules' load-state-dict pre-hooks on a copy, as ``load_state_dict`` does.

    Hooks may adapt entries (a ViT resizing ``pos_embed`` to its own grid); running
    them first lets shapes be compared the way torch would see them. They run again
    inside ``load_state_dict``, so they must be idempotent (torch requires it anyway
    for repeated loads).
    """
    state = dict(state)
    for name, sub in module.named_modules():
        hooks = getattr(sub, "_load_state_dict_pre_hooks", {})
        prefix = f"{name}." if name else ""
        for hook in list(hooks.values()):
            hook(state, prefix, {}, True, [], [], [])
    return state


def _short(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _print_report(report: LoadReport, loc: str, console: Console | None) -> None:
    from rich.table import Table

    table = Table()
    table.add_column("status")
    table.add_column("keys", justify="right")
    table.add_column("examples", overflow="fold")
    mism = [f"{k} {tuple(report.shapes[k][0])}→{tuple(report.shapes[k][1])}" for k in report.mismatched]
    rows = [
        ("loaded", report.loaded, "green"),
        ("missing", report.missing, "yellow"),
        ("unexpected", report.unexpected, "yellow"),
        ("shape mismatch", mism, "red"),
    ]
    for label, keys, style in rows:
        table.add_row(
            label,
            str(len(keys)),
            _short(keys, 4) if label != "loaded" else "",
            style=style if keys and label != "loaded" else None,
        )
    if console is None:
        # Library use: one log line; the CLI passes its console and gets the table.
        _log.info(
            "Pretrained weights for %s: %s (loaded %d, missing %d, unexpected %d, shape mismatch %d)",
            loc, report.checkpoint, len(report.loaded), len(report.missing), len(report.unexpected),
            len(report.mismatched),
        )
        return
    console.print(f"Pretrained weights for {loc}: {report.checkpoint}", soft_wrap=True, markup=False)
    console.print(table)


def load_pretrained(
    module: nn.Module, rule: Pretrained, *, loc: str, console: Console | None = None
) -> LoadReport:
    """Load ``rule.checkpoint`` into ``module`` and report what matched.

    Args:
        module: The component to fill.
        rule: The validated ``Pretrained`` rule.
        loc: Spec path of the rule (``model.backbone.init[0]``) for messages.
        console: Where the table of loaded/missing/unexpected keys goes; without one
            a summary is logged (logger ``pretrain.init``).

    Returns:
        The :class:`LoadReport`; under ``strict`` it is always clean.

    Raises:
        PretrainError: Empty or missing path, unreadable or damaged file (checksum),
            ``prefix`` matching no key, (``strict``) any missing / unexpected /
            mismatched key, or integer/boolean/non-finite weights. Nothing is loaded
            when an error is raised.

    """
    if not rule.checkpoint.strip():
        raise PretrainError(
            f"{loc}: the Pretrained rule has an empty `checkpoint` path.",
            hint=f"Set it, e.g. with --set '{loc.rsplit('.init', 1)[0]}.init="
            f'[{{type = "Pretrained", checkpoint = "PATH.safetensors"'
            + (f', prefix = "{rule.prefix}"' if rule.prefix else "")
            + "}]'.",
        )
    path = Path(rule.checkpoint).expanduser()
    state = _remap(_read_checkpoint(path, rule, loc), rule, loc, str(path))
    state = _run_pre_hooks(module, state)
    own = module.state_dict()
    report = LoadReport(checkpoint=str(path))
    # Lists follow the component's own key order; unexpected keys are sorted.
    for key, tensor in own.items():
        value = state.get(key)
        if value is None:
            report.missing.append(key)
        elif tuple(value.shape) != tuple(tensor.shape):
            report.mismatched.append(key)
            report.shapes[key] = (tuple(value.shape), tuple(tensor.shape))
        else:
            report.loaded.append(key)
    report.unexpected = sorted(k for k in state if k not in own)
    _print_report(report, loc, console)
    if rule.strict and not report.clean:
        parts = []
        if report.missing:
            parts.append(f"missing {_short(report.missing)}")
        if report.unexpected:
            parts.append(f"unexpected {_short(report.unexpected)}")
        if report.mismatched:
            shapes = [f"{k} {report.shapes[k][0]} vs {report.shapes[k][1]}" for k in report.mismatched]
            parts.append(f"shape mismatch (checkpoint vs model) {_short(shapes)}")
        raise PretrainError(
            f"{loc}: {str(path)!r} does not match {type(module).__name__} under strict loading: {'; '.join(parts)}.",
            hint="Fix `prefix`/`key_map`, or set `strict = false` to load only the keys "
            "that match (the rest keep their initialisation).",
        )
    if report.loaded:
        chosen = {k: state[k] for k in report.loaded}
        try:
            check_tensors(chosen, own, f"{loc}: {str(path)!r}")
        except CheckpointError as exc:
            raise PretrainError(exc.message, hint=exc.hint) from exc
        module.load_state_dict(chosen, strict=False)
    else:
        raise PretrainError(
            f"{loc}: no key of {str(path)!r} matches {type(module).__name__}; nothing would be loaded.",
            hint="Check `prefix` and `key_map` against the key names in the table above.",
        )
    return report
