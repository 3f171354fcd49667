"""``pretrain.train`` and ``pretrain.evaluate``: what the CLI runs, callable from Python and notebooks.

Both take a spec file, a mapping or an already validated spec, run exactly the
checks ``pretrain validate`` runs (fields, then shapes and loss target kinds on the
meta device) before anything is created, and return the metrics as a dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from pretrain.assembly.blame import plugin_error
from pretrain.engine.distributed import shutdown
from pretrain.engine.evaluate import evaluate_weights
from pretrain.engine.preflight import check_model
from pretrain.engine.rundir import RunDir
from pretrain.engine.trainer import Trainer
from pretrain.errors import PretrainError, SpecError
from pretrain.spec.files import load_spec
from pretrain.spec.validate import ValidatedSpec, validate_spec

__all__ = ["embed", "evaluate", "prepare_spec", "train"]

SpecLike = str | Path | Mapping[str, Any] | ValidatedSpec


def prepare_spec(
    spec: SpecLike, overrides: Sequence[str] = (), *, check_shapes: bool = True, training: bool = True,
) -> ValidatedSpec:
    """Load, validate and (by default) shape-check a spec, as ``pretrain validate`` does.

    ``training=False`` (evaluation, embedding) checks only the eval-mode steps.

    Raises:
        SpecError: Every problem found, each with its spec path.

    """
    if isinstance(spec, ValidatedSpec):
        if overrides:
            spec = spec.raw
        else:
            validated = spec
    if not isinstance(spec, ValidatedSpec):
        source = None if isinstance(spec, Mapping) else str(spec)
        validated = validate_spec(load_spec(spec, overrides), source=source)
    if check_shapes:
        report = check_model(validated, training=training)
        if report.issues:
            raise SpecError(report.issues, source=validated.source) from report.cause
    return validated


def default_run_dir(spec: SpecLike) -> Path:
    """``runs/<spec file stem>`` (``runs/run`` for specs that are not files)."""
    if isinstance(spec, ValidatedSpec):
        spec = spec.source or "run"
    return Path("runs") / (Path(spec).stem if isinstance(spec, str | Path) else "run")


def train(
    spec: SpecLike, *, overrides: Sequence[str] = (), run_dir: str | Path | None = None,
    resume: bool = False, device: str | None = None, seed: int | None = None,
    console: Console | None = None, live: bool | None = False,
) -> dict[str, Any]:
    """Train a spec's model and return the last epoch's metrics.

    Example:
        >>> metrics = pretrain.train("examples/specs/quickstart.toml", run_dir="runs/nb",
        ...                          overrides=["train.epochs=2"])
        >>> metrics["accuracy/top1"]

    Args:
        spec: A spec file, a spec mapping, or a validated spec.
        overrides: ``--set`` style ``key=value`` strings applied before validation.
        run_dir: Where the run is written (default ``runs/<spec stem>``).
        resume: Continue the run in ``run_dir``.
        device: Overrides ``train.device``.
        seed: Overrides ``train.seed``.
        console: Where progress goes (stderr by default).
        live: Rich live progress bar (False: plain lines, the notebook-friendly default).

    Returns:
        The last epoch's record (``epoch``, ``train_loss``, ``accuracy/top1`` or
        ``val_loss``, ...), as written to ``metrics.jsonl``.

    Raises:
        SpecError: The spec is invalid (nothing was created).
        PretrainError: The run could not start or failed.

    """
    extra = [*overrides, *([f"train.seed={seed}"] if seed is not None else [])]
    validated = prepare_spec(spec, extra)
    trainer = Trainer(validated, run_dir if run_dir is not None else default_run_dir(spec), device=device,
                      resume=resume, console=console, live=live)
    try:
        return trainer.fit()
    except Exception as exc:
        error = _attributed(exc, "while training")
        if error is None:
            raise
        raise error from exc
    finally:
        shutdown()


def evaluate(
    spec: SpecLike, weights: str | Path, *, overrides: Sequence[str] = (), device: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Score weights on a spec's ``data.val`` exactly as training-time validation does.

    Args:
        spec: A spec file, a spec mapping, or a validated spec.
        weights: A ``.safetensors`` file, or a run directory (its best, else last, weights).
        overrides: ``--set`` style ``key=value`` strings.
        device: Overrides ``train.device``.
        console: Where notes go (weights of components the model lacks); logged if None.

    Returns:
        ``accuracy/top{k}``, ``single-label/*``, ``num_samples``, ``per_class``,
        ``confusion_matrix`` for classifiers; ``retrieval/Recall@K``, ``retrieval/mAP@K``
        for retrievers; ``val_loss`` for models without classes; ``knn/top{k}`` with
        ``[eval] knn``; ``weights`` (the file read).

    """
    validated = prepare_spec(spec, overrides, training=False)
    try:
        return evaluate_weights(validated, RunDir.resolve_weights(weights, "best"), device, console)
    except Exception as exc:
        error = _attributed(exc, "while evaluating")
        if error is None:
            raise
        raise error from exc
    finally:
        shutdown()


def embed(
    spec: SpecLike, weights: str | Path, *, split: str = "val", output: str | Path,
    overrides: Sequence[str] = (), device: str | None = None, console: Console | None = None,
) -> dict[str, Any]:
    """Write the features (+ labels) of ``data.<split>`` to an embeddings file.

    Example:
        >>> pretrain.engine.api.embed("examples/specs/retriever_digits.toml", "runs/quickstart",
        ...                           split="gallery", output="gallery.safetensors")

    Returns:
        ``output``, ``num_images``, ``dim``, ``split``, ``weights``.

    """
    from pretrain.engine.embed import embed_split

    validated = prepare_spec(spec, overrides, training=False)
    try:
        return embed_split(validated, RunDir.resolve_weights(weights, "best"), split=split, output=output,
                           device=device, console=console)
    except Exception as exc:
        error = _attributed(exc, "while embedding")
        if error is None:
            raise
        raise error from exc
    finally:
        shutdown()


def _attributed(exc: Exception, during: str) -> PretrainError | None:
    """A PluginError naming the third-party component whose code raised ``exc`` (None: not one)."""
    if isinstance(exc, PretrainError):
        return None
    return plugin_error(exc, during=during)
