"""``pretrain reconstruct SPEC --weights W``: a PNG grid of masked-image-modelling results.

For a model with a ``reconstruct(images)`` method (``MAE``, ``SimMIM``; any algorithm
may add one returning the same keys) the grid shows, for ``--num`` validation images, three
rows: the input, the masked input (removed patches painted grey) and the
reconstruction (predicted pixels where patches were removed, the input elsewhere).
MAE's masks are random (``--seed`` fixes them); SimMIM's come from the split's
mask generator, like its batches.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pretrain.cli._validate import add_spec_arguments

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["add_parser", "make_grid", "reconstruct_images", "run"]

#: Rows of the grid, in order: keys of ``model.reconstruct``'s result.
ROWS = ("input", "masked", "reconstruction")
#: Colour (RGB) of removed patches in the "masked" row.
MASK_COLOUR = (128, 128, 128)
#: Pixels between tiles (white).
GAP = 2


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "reconstruct",
        help="write a PNG of input / masked input / reconstruction (MAE-style models)",
        description=(
            "Build the spec's model, load WEIGHTS (a .safetensors file written by `pretrain train`, "
            "or a run directory: its last weights) and write a PNG grid with one column per image "
            "and three rows: input, masked input (removed patches grey) and reconstruction "
            "(predicted where removed, the input elsewhere). Images come from [data.val], or from "
            "[data.train] (with its pipeline) when the spec has no val table. The model needs a "
            "reconstruct() method (MAE and SimMIM have one; SimMIM's masks come from the split's "
            "mask generator)."
        ),
    )
    add_spec_arguments(p)
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="weights (.safetensors) or a run directory")
    p.add_argument("--out", default="reconstruction.png", metavar="PNG",
                   help="output image (default: reconstruction.png)")
    p.add_argument("--num", type=int, default=8, metavar="N", help="number of images (default: 8)")
    p.add_argument("--split", choices=("val", "train"), default=None,
                   help="data split to draw from (default: val if the spec has it, else train)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random masks (default: 0)")
    p.add_argument("--scale", type=int, default=None, metavar="K",
                   help="enlarge every pixel K times (default: tiles at least 64 px)")
    p.add_argument("--device", metavar="D", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.set_defaults(run=run)


def reconstruct_images(
    spec: Any, weights: Path, *, num: int, split: str | None = None, seed: int = 0, device: str = "cpu",
) -> dict[str, Tensor]:
    """Run ``model.reconstruct`` on the first ``num`` images of a split.

    Args:
        spec: A validated spec with a ``[data]`` table.
        weights: A ``.safetensors`` state dict of the spec's model.
        num: Number of images (fewer if the split is smaller).
        split: ``val`` or ``train``; default ``val`` when the spec has it.
        seed: Seed of the random masks.
        device: Where the model runs.

    Returns:
        ``model.reconstruct``'s tensors on the CPU: ``input``, ``masked``,
        ``reconstruction`` (N, C, H, W) in 0..255 and ``mask`` (N, 1, H, W), 1 = removed.

    Raises:
        PretrainError: No data, a model without ``reconstruct``, or weights that do not fit.

    """
    import dataclasses

    import torch

    from pretrain.assembly.assemble import build_node
    from pretrain.components import Masked
    from pretrain.engine.data import build_loaders
    from pretrain.engine.run_state import load_weights
    from pretrain.engine.sharded import load_weights_file
    from pretrain.errors import PretrainError

    data = spec.sections.get("data")
    if data is None:
        raise PretrainError("the spec has no [data] table, so there are no images to reconstruct",
                            hint="Add [data.val] (e.g. type = \"Digits\", split = \"val\").")
    split = split or ("val" if data.val is not None else "train")
    chosen = data.val if split == "val" else data.train
    if chosen is None:
        raise PretrainError(f"the spec has no [data.{split}] table",
                            hint="Pick the other split with --split, or add the table.")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    model = build_node(spec.model, init=False)
    if not callable(getattr(model, "reconstruct", None)):
        raise PretrainError(
            f"{type(model).__name__} has no reconstruct() method, so there is nothing to draw",
            hint="Use a masked-image-modelling model such as MAE (or give your algorithm a "
            "reconstruct(images) method returning input, masked, reconstruction and mask).",
        )
    tensors, _ = load_weights_file(weights)
    load_weights(model, tensors, weights)  # every key and shape, or a CheckpointError
    model.to(dev).eval()
    # Evaluation loader over the chosen split: fixed order, fixed augmentation seed.
    section = dataclasses.replace(data, train=None, val=chosen)
    loaders = build_loaders(section, device=dev, distributed=False, rank=0, world_size=1, seed=seed,
                            num_classes=None, in_channels=getattr(model, "in_channels", None),
                            splits=("val",))
    assert loaders.val is not None
    torch.manual_seed(seed)
    parts: dict[str, list[Tensor]] = {}
    taken = 0
    for images, _ in loaders.val:
        need = num - taken
        if isinstance(images, Masked):  # mask-generator pipelines (SimMIM): keep the masks
            views = images.images
            first = [v[:need] for v in views] if isinstance(views, list) else views[:need]
            batch: Any = Masked(first, images.mask[:need])
        else:
            batch = [v[:need] for v in images] if isinstance(images, list) else images[:need]
        with torch.no_grad():
            out = model.reconstruct(batch)
        for key in (*ROWS, "mask"):
            if key not in out:
                raise PretrainError(f"{type(model).__name__}.reconstruct() returned no {key!r} entry",
                                    hint=f"It must return {', '.join((*ROWS, 'mask'))}.")
            parts.setdefault(key, []).append(out[key].detach().float().cpu())
        taken += len(out["input"])
        if taken >= num:
            break
    return {k: torch.cat(v) for k, v in parts.items()}


def make_grid(images: dict[str, Tensor], *, scale: int | None = None) -> Any:
    """Lay ``input`` / ``masked`` / ``reconstruction`` out as rows of a PIL RGB image.

    Args:
        images: ``reconstruct_images``'s result.
        scale: Nearest-neighbour enlargement per pixel; default: tiles >= 64 px.

    Returns:
        A ``PIL.Image.Image`` (RGB).

    """
    import numpy as np
    import torch
    from PIL import Image

    n, _, h, w = images["input"].shape
    k = scale or max(1, -(-64 // max(1, min(h, w))))

    def rgb(x: Tensor) -> Tensor:  # (N, C, H, W) 0..255 -> (N, 3, H, W) uint8
        x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
        return x.round().clamp(0, 255).to(torch.uint8)

    rows = {key: rgb(images[key]) for key in ROWS}
    grey = torch.tensor(MASK_COLOUR, dtype=torch.uint8).view(1, 3, 1, 1)
    removed = images["mask"].bool().expand(-1, 3, -1, -1)  # (N, 3, H, W)
    rows["masked"] = torch.where(removed, grey, rows["masked"])
    th, tw = h * k, w * k
    canvas = np.full((len(ROWS) * (th + GAP) + GAP, n * (tw + GAP) + GAP, 3), 255, dtype=np.uint8)
    for r, key in enumerate(ROWS):
        tiles = rows[key].repeat_interleave(k, 2).repeat_interleave(k, 3)  # (N, 3, th, tw)
        for i in range(n):
            y, x = GAP + r * (th + GAP), GAP + i * (tw + GAP)
            canvas[y:y + th, x:x + tw] = tiles[i].permute(1, 2, 0).numpy()
    return Image.fromarray(canvas, mode="RGB")


def run(args: argparse.Namespace) -> int:
    """Write the reconstruction grid."""
    from pretrain.cli._console import console
    from pretrain.engine.api import prepare_spec
    from pretrain.engine.rundir import RunDir
    from pretrain.errors import PretrainError

    if args.num < 1:
        raise PretrainError(f"--num must be at least 1, got {args.num}")
    if args.scale is not None and args.scale < 1:
        raise PretrainError(f"--scale must be at least 1, got {args.scale}")
    spec = prepare_spec(args.spec, args.overrides, training=False)
    weights = RunDir.resolve_weights(args.weights, prefer="last")
    images = reconstruct_images(spec, weights, num=args.num, split=args.split, seed=args.seed,
                                device=args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, scale=args.scale).save(out, format="PNG")
    removed = float(images["mask"].mean()) * 100
    console.print(f"wrote {out}: {len(images['input'])} images (rows: input, masked, reconstruction; "
                  f"{removed:.0f} % of the pixels removed)")
    return 0
