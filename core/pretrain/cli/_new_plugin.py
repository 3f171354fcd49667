"""``pretrain new-plugin NAME [--dist DIST] [--package PKG]``: scaffold a plugin package that passes its tests.

The package has a ``pyproject.toml`` with one entry point per component, one
typed component per requested kind (``src/<package>/``), tests that run the
conformance kit, a spec that trains the components on the bundled digits, and a
README with the commands::

    pretrain new-plugin acme                  # distribution pretrain-acme, package pretrain_acme
    pretrain new-plugin orchid --dist orchid-vision --package orchid_vision
    pip install ./pretrain-acme
    pytest pretrain-acme/tests
    pretrain train pretrain-acme/acme.toml
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from pretrain.registry.kinds import KINDS as _GROUPS

__all__ = ["KINDS", "PluginPlan", "add_parser", "plan_plugin", "run", "write_plugin"]

#: Kinds the scaffold can write, in order.
KINDS = ("backbone", "neck", "head", "loss", "model")
_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")

# Built-ins that stand in for kinds the plugin does not provide, so the spec always trains.
_FALLBACK_BACKBONE = ("ResNet_CIFAR", '"depth": 18, "in_channels": 1, "stem_channels": 16, "base_channels": 16', 128)
_OWN_BACKBONE = '"in_channels": 1, "base_channels": 16, "num_stages": 3'


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "new-plugin",
        help="scaffold a plugin package (components, entry points, tests, spec, README)",
        description=(
            "Write an installable package with one typed component per requested kind, its "
            "entry points, tests that run pretrain's conformance kit, a spec that trains the "
            "components on the bundled digits, and a README. It passes its tests as generated."
        ),
    )
    p.add_argument("name", help="plugin name, e.g. acme: class names AcmeBackbone, ...; distribution "
                   "pretrain-acme and package pretrain_acme unless --dist/--package say otherwise")
    p.add_argument("--dist", metavar="DIST", help="distribution name (what `pip install` and `pretrain plugins` "
                   "show), e.g. orchid-vision; default pretrain-NAME")
    p.add_argument("--package", metavar="PKG", help="import package name, e.g. orchid_vision; default: the "
                   "distribution name with - replaced by _")
    p.add_argument("--kinds", default=",".join(KINDS), metavar="K1,K2",
                   help=f"component kinds to write (default: all of {','.join(KINDS)})")
    p.add_argument("--dir", metavar="D", help="output directory (default: ./<distribution>)")
    p.add_argument("--force", action="store_true", help="write into an existing non-empty directory")
    p.set_defaults(run=run)


@dataclass(frozen=True)
class PluginPlan:
    """Names derived from the plugin name, and the files to write."""

    name: str
    dist: str
    package: str
    prefix: str
    kinds: tuple[str, ...]
    files: dict[str, str]

    @property
    def spec(self) -> str:
        """File name of the classification spec."""
        return f"{self.name.replace('-', '_')}.toml"


def _fail(message: str, hint: str | None = None) -> Exception:
    from pretrain.errors import PretrainError

    return PretrainError(message, hint=hint)


_DIST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
#: Import names a plugin package must not take (they would shadow pretrain or its dependencies).
_TAKEN = frozenset({"pretrain", "pretrain_builtins", "torch", "torchvision", "pydantic", "rich", "pluggy",
                    "safetensors", "numpy", "tests", "test"})


def _check_package(package: str) -> None:
    import keyword
    import sys

    if not package.isidentifier() or keyword.iskeyword(package) or not package.isascii():
        raise _fail(f"invalid --package {package!r}: it must be a Python identifier",
                    "Use lower-case letters, digits and _, e.g. orchid_vision.")
    if package in _TAKEN or package in sys.stdlib_module_names:
        raise _fail(f"--package {package!r} would shadow an existing module of that name",
                    "Choose a name of your own, e.g. one that starts with your organisation's name.")


def plan_plugin(
    name: str, kinds: list[str] | tuple[str, ...] = KINDS, *, dist: str | None = None, package: str | None = None,
) -> PluginPlan:
    """Compute every file of the plugin ``name`` providing ``kinds`` (nothing is written).

    Args:
        name: Plugin name; the component classes are ``<Name>Backbone``, ``<Name>Head``, ...
        kinds: Component kinds to write.
        dist: Distribution name (default ``pretrain-<name>``).
        package: Import package (default: ``dist`` with ``-`` and ``.`` replaced by ``_``).

    Raises:
        PretrainError: Invalid name, distribution or package, or an unknown kind.

    """
    from pretrain import __version__

    name = name.strip().lower()
    bare = name.removeprefix("pretrain-").removeprefix("pretrain_")
    if not _NAME.match(bare):
        raise _fail(f"invalid plugin name {name!r}",
                    "Use lower-case letters, digits and single - or _ between words, e.g. acme or my-models.")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise _fail(f"unknown kind(s) {', '.join(unknown) or '(none given)'} for --kinds",
                    f"Choose from {','.join(KINDS)}.")
    kinds = tuple(k for k in KINDS if k in kinds)
    if dist is not None and not _DIST.match(dist.strip()):
        raise _fail(f"invalid --dist {dist!r}",
                    "A distribution name has letters, digits, '-', '_' and '.', and starts and ends with a "
                    "letter or digit, e.g. orchid-vision.")
    dist = dist.strip() if dist else f"pretrain-{bare.replace('_', '-')}"
    package = package.strip() if package else re.sub(r"[-.]+", "_", dist).lower()
    _check_package(package)
    prefix = "".join(part.capitalize() for part in re.split(r"[-_]", bare))
    names = {k: f"{prefix}{suffix}" for k, (_, suffix, _) in _components().items()}
    own = {k: names[k] for k in kinds}
    backbone = own.get("backbone", _FALLBACK_BACKBONE[0])
    backbone_args = _OWN_BACKBONE if "backbone" in own else _FALLBACK_BACKBONE[1]
    channels = 64 if "backbone" in own else _FALLBACK_BACKBONE[2]
    neck = own.get("neck", "GlobalAveragePooling")
    head = own.get("head", "LinearClsHead")
    loss = own.get("loss")
    values = {
        "dist": dist, "package": package, "Prefix": prefix, "pretrain_version": __version__,
        "default_loss": loss or "CrossEntropyLoss", "backbone": backbone, "neck": neck, "head": head,
        "backbone_example": _example(backbone_args), "example_channels": 32 if "backbone" in own else 64,
        "summary": ", ".join(f"{own[k]} ({k})" for k in kinds),
    }
    files: dict[str, str] = {}
    for kind in kinds:
        module, _, template = _components()[kind]
        files[f"src/{package}/{module}.py"] = Template(template).substitute(values)
    files[f"src/{package}/__init__.py"] = Template(_t().INIT).substitute(values)
    eps = "".join(
        f'[project.entry-points."{_GROUPS[k]}"]\n{own[k]} = "{package}.{_components()[k][0]}:{own[k]}"\n\n'
        for k in kinds
    )
    files["pyproject.toml"] = Template(_t().PYPROJECT).substitute(values, entry_points=eps)
    spec_name = f"{bare.replace('-', '_')}.toml"
    files[spec_name] = _spec(prefix, backbone, backbone_args, neck, head, loss, channels, classes=10)
    specs = [spec_name]
    if "model" in own:
        pre_name = f"{bare.replace('-', '_')}_pretrain.toml"
        files[pre_name] = _spec(prefix, backbone, backbone_args, neck, head, None, channels, classes=4,
                                model=own["model"])
        specs.append(pre_name)
    files[f"tests/test_{package}.py"] = Template(_t().TESTS).substitute(
        values, names=json.dumps(list(own.values())), specs=json.dumps(specs))
    files["README.md"] = Template(_t().README).substitute(values, spec=spec_name)
    files[".gitignore"] = "build/\n*.egg-info/\n__pycache__/\nruns/\n"
    return PluginPlan(bare, dist, package, prefix, kinds, files)


def _t() -> Any:
    from pretrain.cli import _plugin_templates

    return _plugin_templates


def _components() -> dict[str, tuple[str, str, str]]:
    components: dict[str, tuple[str, str, str]] = _t().COMPONENTS
    return components


def _example(args: str) -> str:
    # The template writes a Python dict: the spec arguments minus the digits' in_channels.
    return ", ".join(a for a in args.split(", ") if not a.startswith('"in_channels"')).replace(
        '"base_channels": 16', '"base_channels": 8').replace('"stem_channels": 16', '"stem_channels": 8')


def _toml_table(args: str) -> str:
    return "\n".join(f"{k.strip().strip(chr(34))} = {v.strip()}" for k, v in (a.split(":") for a in args.split(", ")))


def _spec(prefix: str, backbone: str, backbone_args: str, neck: str, head: str, loss: str | None,
          channels: int, *, classes: int, model: str | None = None) -> str:
    """A spec training the plugin's components (built-ins where it has none) on the digits."""
    pretext = model is not None
    lines = [
        f"# {'Self-supervised pretraining' if pretext else 'Classification'} with {prefix}'s components "
        "on the bundled 16x16 handwritten digits.",
        f'name = "{prefix.lower()}{"-pretrain" if pretext else ""}"',
        "",
        "[model]",
        f'type = "{model or "ImageClassifier"}"',
        *([] if pretext else ["in_channels = 1"]),
        "mean = [127.5]",
        "std = [127.5]",
        "",
        "[model.backbone]",
        f'type = "{backbone}"',
        _toml_table(backbone_args),
        "",
        "[model.neck]",
        f'type = "{neck}"',
        "",
        "[model.head]",
        f'type = "{head}"',
        f"num_classes = {classes}",
        f"in_channels = {channels}",
    ]
    if loss:
        lines += ["", "[model.head.loss]", f'type = "{loss}"']
    lines += [
        "", "[data]", "batch_size = 64", "image_size = 16", "",
        "[data.train]", 'type = "Digits"', 'split = "train"', "image_size = 16",
    ]
    if not pretext:
        lines += ["", "[data.val]", 'type = "Digits"', 'split = "val"', "image_size = 16", "",
                  "[eval]", "topk = [1, 5]"]
    lines += ["", "[train]", "epochs = 5", "", "[train.optimizer]", 'type = "SGD"', "lr = 0.05",
              "momentum = 0.9", "weight_decay = 5e-4", ""]
    return "\n".join(lines)


def write_plugin(plan: PluginPlan, directory: Path, *, force: bool = False) -> list[Path]:
    """Write ``plan``'s files under ``directory``; return the paths written.

    Raises:
        PretrainError: ``directory`` exists and is not empty (without ``force``).

    """
    if directory.exists() and any(directory.iterdir()) and not force:
        raise _fail(f"{directory} already exists and is not empty",
                    "Choose another --dir, or pass --force to overwrite the generated files.")
    written = []
    for rel, text in plan.files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def run(args: argparse.Namespace) -> int:
    """Scaffold the plugin and print the next commands."""
    from rich.markup import escape

    from pretrain.cli._console import console

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    plan = plan_plugin(args.name, kinds, dist=args.dist, package=args.package)
    directory = Path(args.dir) if args.dir else Path(plan.dist)
    written = write_plugin(plan, directory, force=args.force)
    names = ", ".join(f"{plan.prefix}{_components()[k][1]}" for k in plan.kinds)
    console.print(f"[green]created[/] {escape(str(directory))}: distribution {plan.dist}, package "
                  f"{plan.package}, components {escape(names)} ({len(written)} files)")
    d = escape(str(directory))
    console.print("next:")
    for line in (f"pip install {d}", f"pytest {d}/tests", "pretrain list-components",
                 f"pretrain validate {d}/{plan.spec}", f"pretrain train {d}/{plan.spec}"):
        console.print(f"  {line}")
    return 0
