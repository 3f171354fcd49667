"""Any timm model as a backbone (optional dependency: ``pip install pretrain[timm]``).

Provenance: MMPretrain ``mmpretrain/models/backbones/timm_backbone.py``: the same
fields (``model_name``, ``features_only``, ``pretrained``, ``checkpoint_path``,
``in_channels``) and the same output: the classifier is removed
(``reset_classifier(0, global_pool)``) and the model's output is returned as a tuple
(unpooled features by default; every feature level with ``features_only``).

Differences (``docs/differences.md``):

* timm is imported only when a spec uses this component; without it, validation
  reports ``pip install pretrain[timm]`` at ``model.backbone.model_name``, and an
  unknown model name lists timm's close matches;
* ``pretrained = true`` never downloads: it loads timm's weights from the local
  Hugging Face / torch-hub cache (or ``checkpoint_path``) and fails with the locations
  searched when there is no local copy. Checkpoints are read with safetensors or
  ``torch.load(weights_only=True)``, never unpickled;
* ``global_pool`` pools with the model's own head (``"avg"``, ``"token"``, ...) to (B, C);
  ``drop_rate``/``drop_path_rate``/``img_size`` and ``model_kwargs`` replace
  MMPretrain's free ``**kwargs``;
* ``pretrain validate`` builds the model with meta parameters (timm code that calls
  ``.item()`` in ``__init__`` still runs on CPU scalars), so its output shapes are
  checked without allocating weights.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseBackbone
from pretrain.errors import PretrainError

__all__ = ["TIMMBackbone", "find_cached_weights", "import_timm"]

_INSTALL_HINT = "Install the optional dependency: pip install pretrain[timm]  (or: pip install timm)"

#: Scalar values ``model_kwargs`` may hold (TOML/JSON literals).
KwargValue = int | float | bool | str | list[int] | list[float] | None


def import_timm() -> Any:
    """Import timm, or raise a :class:`PretrainError` naming the extra to install."""
    try:
        import timm
    except ImportError as exc:
        raise PretrainError(
            f"TIMMBackbone needs the timm package, which is not installed ({exc}).", hint=_INSTALL_HINT
        ) from exc
    return timm


def _close_matches(timm: Any, name: str) -> list[str]:
    arch = name.split(".", 1)[0].lower()
    # A prefix ("vit_tiny" -> vit_tiny_patch16_224, ...) first, then spelling neighbours.
    prefixed = list(timm.list_models(f"{arch}*"))[:5]
    return prefixed or difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)


def _hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def _torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_cached_weights(model_name: str) -> tuple[Path | None, list[str]]:
    """Locate timm's pretrained weights of ``model_name`` on this machine, without any download.

    Looks in the Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``,
    ``~/.cache/huggingface/hub``) for the model's ``hf_hub_id``, then in torch hub's
    checkpoint directory for its legacy ``url``.

    Args:
        model_name: A timm model name, optionally with a pretrained tag (``resnet50.a1_in1k``).

    Returns:
        The file (or ``None``) and the locations searched, for messages.

    """
    timm = import_timm()
    cfg = timm.models.get_pretrained_cfg(model_name, allow_unregistered=True)
    searched: list[str] = []
    if cfg is None:
        return None, searched
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        repo = _hf_cache_dir() / ("models--" + hub_id.replace("/", "--"))
        searched.append(str(repo))
        filenames = [getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin",
                     "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        ref = repo / "refs" / "main"
        snapshots = [repo / "snapshots" / ref.read_text().strip()] if ref.is_file() else []
        snapshots += sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
        for snapshot in snapshots:
            for filename in filter(None, filenames):
                if (snapshot / filename).is_file():
                    return snapshot / filename, searched
    url = getattr(cfg, "url", None)
    if url:
        path = _torch_hub_checkpoints() / os.path.basename(url.split("?", 1)[0])
        searched.append(str(path))
        if path.is_file():
            return path, searched
    return None, searched


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a checkpoint file, without unpickling arbitrary objects."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError and friends: not a plain tensor file
            raise PretrainError(
                f"TIMMBackbone: cannot read {path} as tensors only ({str(exc).splitlines()[0]}).",
                hint="pretrain never unpickles objects: re-save it as a plain state dict "
                "(torch.save(model.state_dict(), path)) or as .safetensors.",
            ) from exc
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise PretrainError(f"TIMMBackbone: {path} does not hold a state dict.",
                            hint="Save the weights with torch.save(model.state_dict(), path).")
    return {str(k).removeprefix("module."): v for k, v in state.items() if isinstance(v, Tensor)}


@contextmanager
def _meta_parameters() -> Iterator[None]:
    """Create modules on the CPU but move every parameter and buffer to ``meta`` as it is registered.

    Lets ``pretrain validate`` build timm models whose ``__init__`` does arithmetic on
    tensors (``torch.linspace(...).item()``) without allocating their weights.
    """
    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def meta_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(module, name, param)

    def meta_buffer(module: nn.Module, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        register_buffer(module, name, None if tensor is None else tensor.to("meta"), persistent=persistent)

    nn.Module.register_parameter = meta_parameter  # type: ignore[method-assign]
    nn.Module.register_buffer = meta_buffer  # type: ignore[method-assign]
    try:
        with torch.device("cpu"):
            yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


def _building_on_meta() -> bool:
    return torch.empty(()).device.type == "meta"


class TIMMBackbone(BaseBackbone):
    """Any timm model as a backbone; returns a tuple of its features (needs ``pretrain[timm]``).

    By default the model's classifier is removed and its unpooled output is returned:
    (B, C, H, W) for CNNs, (B, L, C) tokens for ViTs. ``global_pool`` pools with the
    model's own head to (B, C); ``features_only`` returns the feature pyramid (one
    map per ``out_indices`` level). ``out_channels`` lists each output's channels.

    Args:
        model_name: timm model name, optionally with a pretrained tag
            (``resnet50``, ``convnext_tiny.fb_in22k``, ``vit_small_patch16_224``).
        features_only: Return timm's multi-scale feature maps (not for every model).
        pretrained: Load timm's pretrained weights from the local cache (never downloads;
            download once with ``timm.create_model(name, pretrained=True)``), or from
            ``checkpoint_path`` when it is set.
        checkpoint_path: A local timm-format checkpoint (.safetensors, .pth) to load;
            empty for none. Read without unpickling.
        in_channels: Channels of the input images (timm adapts pretrained stem weights).
        out_indices: With ``features_only``: the feature levels to return (timm's indices).
        global_pool: ``""`` returns unpooled features (MMPretrain's behaviour); a timm
            pool type (``avg``, ``max``, ``avgmax``, ``token``, ...) pools to (B, C).
        img_size: Input size for models built for a fixed size (ViTs); none keeps timm's.
        drop_rate: Dropout rate passed to the model (0 passes nothing).
        drop_path_rate: Stochastic-depth rate passed to the model (0 passes nothing).
        model_kwargs: Further keyword arguments of ``timm.create_model``
            (e.g. ``{patch_size = 4}``).

    """

    #: Keep timm's own initialisation.
    default_init: ClassVar[list[dict[str, Any]]] = []

    #: A small instance for the conformance kit (``pretrain.testing``).
    example_config: ClassVar[dict[str, Any]] = {"model_name": "test_resnet"}
    #: One input sample for the kit (``img_size`` may be unset).
    example_input: ClassVar[tuple[int, ...]] = (3, 32, 32)

    def __init__(
        self,
        *,
        model_name: str,
        features_only: bool = False,
        pretrained: bool = False,
        checkpoint_path: str = "",
        in_channels: Annotated[int, Field(gt=0)] = 3,
        out_indices: tuple[int, ...] | None = None,
        global_pool: str = "",
        img_size: Annotated[int, Field(gt=0)] | None = None,
        drop_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        drop_path_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        model_kwargs: dict[str, KwargValue] | None = None,
    ) -> None:
        super().__init__()
        timm = import_timm()
        for field, message in type(self).spec_issues({"model_name": model_name, "out_indices": out_indices,
                                                        "features_only": features_only}):
            raise PretrainError(f"TIMMBackbone: {field}: {message}")
        self.model_name = model_name
        self.features_only = features_only
        self.global_pool = global_pool
        kwargs: dict[str, Any] = dict(model_kwargs or {})
        if img_size is not None:
            kwargs["img_size"] = img_size
        if drop_rate:
            kwargs["drop_rate"] = drop_rate
        if drop_path_rate:
            kwargs["drop_path_rate"] = drop_path_rate
        if features_only:
            kwargs["features_only"] = True
            if out_indices is not None:
                kwargs["out_indices"] = tuple(out_indices)
        on_meta = _building_on_meta()
        weights = Path(checkpoint_path).expanduser() if checkpoint_path else None
        if weights is not None and not weights.is_file():
            raise PretrainError(
                f"TIMMBackbone: checkpoint_path {checkpoint_path!r} is not a file.",
                hint="Give the path of a local .safetensors/.pth checkpoint, or leave it empty.",
            )
        if pretrained and weights is None:
            cached, searched = find_cached_weights(model_name)
            if cached is None:
                raise PretrainError(
                    f"TIMMBackbone: pretrained = true, but timm's weights for {model_name!r} are not on "
                    f"this machine (searched: {', '.join(searched) or 'no weights are published for it'}). "
                    "pretrain never downloads weights.",
                    hint=f"Download them once (python -c \"import timm; timm.create_model('{model_name}', "
                    "pretrained=True)\"), or set checkpoint_path to a local file, or pretrained = false.",
                )
            # timm's own loader on the local file: its checkpoint filters and in_chans adaptation.
            kwargs.update(pretrained=not on_meta,
                          pretrained_cfg_overlay={"file": str(cached), "source": ""})
        self.timm_model = self._create(timm, model_name, in_channels, kwargs, on_meta)
        if weights is not None and not on_meta:
            self._load_checkpoint(weights)
        if not features_only:
            self.timm_model.reset_classifier(0, global_pool)
        #: Channels of each returned feature, in output order.
        self.out_channels = self._output_channels()

    @staticmethod
    def _create(timm: Any, name: str, in_channels: int, kwargs: dict[str, Any], on_meta: bool) -> nn.Module:
        try:
            if on_meta:
                with _meta_parameters():
                    model: nn.Module = timm.create_model(name, in_chans=in_channels, **kwargs)
            else:
                model = timm.create_model(name, in_chans=in_channels, **kwargs)
        except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
            raise PretrainError(
                f"TIMMBackbone: timm.create_model({name!r}, ...) failed: {exc}",
                hint="Check the model's options (features_only, out_indices, img_size, model_kwargs) "
                "against timm's documentation for this model.",
            ) from exc
        return model

    def _load_checkpoint(self, path: Path) -> None:
        """Load a timm-format state dict; only the classifier may be missing or extra."""
        state = _read_state_dict(path)
        head = set()
        classifier = getattr(self.timm_model, "get_classifier", None)
        if callable(classifier):
            module = classifier()
            head = {f"{n}.{p}" for n, m in self.timm_model.named_modules() if m is module
                    for p, _ in m.named_parameters()}
        result = self.timm_model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if k not in head]
        unexpected = [] if self.features_only else [k for k in result.unexpected_keys if k not in head]
        if missing or unexpected:
            parts = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                     for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
            raise PretrainError(
                f"TIMMBackbone: {path} does not fit timm model {self.model_name!r} ({'; '.join(parts)}).",
                hint="Check model_name: the checkpoint is probably another architecture or size.",
            )

    def _output_channels(self) -> tuple[int, ...]:
        model = self.timm_model
        if self.features_only:
            return tuple(int(c) for c in model.feature_info.channels())  # type: ignore[union-attr, operator]
        width = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
        return (int(width),) if width is not None else ()

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """Timm must be installed and know ``model_name``; ``out_indices`` needs ``features_only``."""
        name = params.get("model_name")
        try:
            timm = import_timm()
        except PretrainError as exc:
            yield "model_name", f"{exc.message} {_INSTALL_HINT}"
            return
        if isinstance(name, str) and not timm.is_model(name):
            matches = _close_matches(timm, name)
            hint = f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
            yield "model_name", f"timm has no model {name!r}{hint} (timm.list_models() lists them)"
        if params.get("out_indices") is not None and not params.get("features_only", False):
            yield "out_indices", "selects feature levels, so it needs features_only = true"

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """(B, C_in, H, W) images -> a tuple of the timm model's features."""
        features = self.timm_model(x)
        if isinstance(features, (list, tuple)):
            return tuple(features)
        return (features,)
