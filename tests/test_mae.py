"""MAE model side: MAEViT masking, decoder, head, reconstruction loss, HOG targets, MAE."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import pretrain
from pretrain import PretrainError, SpecError
from pretrain.assembly.assemble import build_from_spec
from pretrain.selfsup import BaseSelfSupervisor
from pretrain_builtins.backbones.mae_vit import (
    MAEViT,
    build_2d_sincos_position_embedding,
    num_kept_patches,
)
from pretrain_builtins.heads.mae_head import patchify, unpatchify
from pretrain_builtins.losses.reconstruction import PixelReconstructionLoss
from pretrain_builtins.models.mae import MAE
from pretrain_builtins.target_generators.hog import HOGGenerator

ENC = {"embed_dims": 32, "num_layers": 2, "num_heads": 2, "feedforward_channels": 64}


def mae_spec(img: int | list[int] = 32, patch: int = 8, norm_pix: bool = True, **backbone: Any) -> dict[str, Any]:
    h, w = (img, img) if isinstance(img, int) else img
    return {
        "model": {
            "type": "MAE",
            "backbone": {"type": "MAEViT", "arch": ENC, "img_size": img, "patch_size": patch, **backbone},
            "neck": {
                "type": "MAEPretrainDecoder", "num_patches": [h // patch, w // patch],
                "patch_size": patch, "embed_dim": 32, "decoder_embed_dim": 16,
                "decoder_depth": 1, "decoder_num_heads": 2,
            },
            "head": {"type": "MAEPretrainHead", "norm_pix": norm_pix, "patch_size": patch},
        }
    }


def build_mae(seed: int = 0, **kw: Any) -> MAE:
    model = pretrain.build_model(mae_spec(**kw), seed=seed)
    assert isinstance(model, MAE)
    return model


def images(n: int = 4, h: int = 32, w: int = 32, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=gen, dtype=torch.uint8)


# ----------------------------------------------------------------------------- masking


def expected_keep(length: int, ratio: str) -> int:
    """Independent count: round-half-up of L·(1−r) in exact rational arithmetic, in [1, L]."""
    exact = length * (1 - Fraction(ratio))
    return max(1, min(length, math.floor(exact + Fraction(1, 2))))


RATIOS = ["0", "0.1", "0.2", "0.25", "0.3", "0.4", "0.5", "0.6", "0.7", "0.75", "0.8", "0.9", "0.95"]


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 7, 10, 16, 49, 64, 196, 400])
def test_kept_patch_counts_exact(length: int) -> None:
    encoder = MAEViT(arch=ENC, img_size=16, patch_size=8)
    for ratio in RATIOS:
        keep = expected_keep(length, ratio)
        assert num_kept_patches(length, float(ratio)) == keep, (length, ratio)
        kept, mask, ids_restore = encoder.random_masking(torch.randn(3, length, 32), float(ratio))
        assert kept.shape == (3, keep, 32)
        assert mask.sum(dim=1).tolist() == [length - keep] * 3
        assert ids_restore.shape == (3, length)


def test_float_truncation_cases() -> None:
    # int(L * (1 - r)) keeps 0 patches in both cases; we keep 1.
    assert int(10 * (1 - 0.9)) == 0 and num_kept_patches(10, 0.9) == 1
    assert int(5 * (1 - 0.8)) == 0 and num_kept_patches(5, 0.8) == 1
    assert num_kept_patches(196, 0.75) == 49 and num_kept_patches(64, 0.75) == 16


def test_mask_ids_restore_round_trip() -> None:
    torch.manual_seed(0)
    encoder = MAEViT(arch=ENC, img_size=16, patch_size=8)
    b, length, c = 3, 20, 32
    x = torch.randn(b, length, c)
    kept, mask, ids_restore = encoder.random_masking(x, 0.75)
    # ids_restore is a permutation of each row.
    assert torch.equal(ids_restore.sort(dim=1).values, torch.arange(length).expand(b, -1))
    # Unshuffling [kept, placeholders] puts every kept token back where it came from.
    placeholder = torch.full((b, length - kept.shape[1], c), float("nan"))
    restored = torch.gather(torch.cat([kept, placeholder], 1), 1, ids_restore[..., None].expand(-1, -1, c))
    visible = mask == 0
    assert torch.equal(restored[visible], x[visible])
    assert torch.isnan(restored[~visible]).all()
    # Kept tokens appear in shuffle order: argsort(ids_restore) = ids_shuffle.
    ids_shuffle = ids_restore.argsort(dim=1)
    assert torch.equal(kept, torch.gather(x, 1, ids_shuffle[:, : kept.shape[1], None].expand(-1, -1, c)))


def test_masked_forward_shapes_and_unmasked_path() -> None:
    model = build_mae()
    encoder = model.backbone
    x = torch.randn(2, 3, 32, 32)
    latent, mask, ids_restore = encoder(x)
    assert latent.shape == (2, 1 + 4, 32) and mask.shape == (2, 16) and ids_restore.shape == (2, 16)
    for flag in (False, None):
        out = encoder(x, mask=flag)
        assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (2, 17, 32)
    feats = model.extract_feat(images(2))
    assert feats[0].shape == (2, 17, 32)


def test_sincos_matches_mmpretrain_for_square_grids() -> None:
    def mmpretrain(size: int, dims: int) -> Tensor:  # position_encoding.py, verbatim logic
        grid_w = torch.arange(size, dtype=torch.float32)
        grid_h = torch.arange(size, dtype=torch.float32)
        grid_w, grid_h = torch.meshgrid(grid_w, grid_h, indexing="ij")
        pos_dim = dims // 4
        omega = 1.0 / (10000.0 ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim))
        out_w = torch.einsum("m,d->md", grid_w.flatten(), omega)
        out_h = torch.einsum("m,d->md", grid_h.flatten(), omega)
        emb = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]
        return torch.cat([torch.zeros(1, 1, dims), emb], dim=1)

    assert torch.allclose(build_2d_sincos_position_embedding(7, 32, cls_token=True), mmpretrain(7, 32))
    rect = build_2d_sincos_position_embedding((2, 3), 8)
    # token (r, c) = index r*3 + c: first half encodes the row, second the column
    assert torch.allclose(rect[0, 1 * 3 + 2, :2], torch.tensor([math.sin(1.0), math.sin(1.0 / 100)]))
    assert torch.allclose(rect[0, 1 * 3 + 2, 4:6], torch.tensor([math.sin(2.0), math.sin(2.0 / 100)]))


def test_pos_embed_is_fixed_sincos() -> None:
    model = build_mae()
    assert not model.backbone.pos_embed.requires_grad
    assert not model.neck.decoder_pos_embed.requires_grad
    expected = build_2d_sincos_position_embedding((4, 4), 32, cls_token=True)
    assert torch.allclose(model.backbone.pos_embed, expected)


# ----------------------------------------------------------------------------- head / loss


@pytest.mark.parametrize(("h", "w"), [(32, 32), (16, 40)])
def test_patchify_unpatchify(h: int, w: int) -> None:
    x = torch.randn(2, 3, h, w)
    patches = patchify(x, 8)
    assert patches.shape == (2, (h // 8) * (w // 8), 8 * 8 * 3)
    # MAE's reference layout: einsum('nchpwq->nhwpqc')
    ref = torch.einsum("nchpwq->nhwpqc", x.reshape(2, 3, h // 8, 8, w // 8, 8)).reshape(2, -1, 192)
    assert torch.equal(patches, ref)
    assert torch.equal(unpatchify(patches, 8, 3, (h // 8, w // 8)), x)
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.randn(1, 3, 30, 32), 8)


def test_norm_pix_loss_is_one_for_a_zero_predictor() -> None:
    """With per-patch normalised targets, predicting 0 costs E[t²] = (D−1)/D ≈ 1."""
    model = build_mae()
    nn.init.zeros_(model.neck.decoder_pred.weight)
    nn.init.zeros_(model.neck.decoder_pred.bias)
    loss = model.loss(images(8))["loss"].item()
    d = 8 * 8 * 3
    assert loss == pytest.approx((d - 1) / d, abs=1e-3)


def test_norm_pix_loss_at_init_is_one_plus_prediction_power() -> None:
    """At init the prediction is independent of the target: loss = E[t²] + E[p²] (no cross term).

    MMPretrain's Xavier init gives E[p²] ≈ 0.8 (1.81 for the ViT-B/16 MAE on random images).
    """
    model = build_mae()
    x = images(8)
    torch.manual_seed(0)
    loss = model.loss(x)["loss"].item()
    torch.manual_seed(0)
    xn = model.preprocess(x)
    latent, mask, ids_restore = model.backbone(xn)
    (pred,) = model.neck(latent, ids_restore)
    target = model.head.construct_target(xn)
    masked = mask.bool()
    t2 = target.square().mean(-1)[masked].mean().item()
    p2 = pred.square().mean(-1)[masked].mean().item()
    assert t2 == pytest.approx(1.0, abs=0.01)
    assert loss == pytest.approx(t2 + p2, abs=0.05)
    assert 1.0 < loss < 3.0


def test_loss_ignores_visible_patches() -> None:
    torch.manual_seed(0)
    pred = torch.randn(2, 6, 12, requires_grad=True)
    target = torch.randn(2, 6, 12)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 1, 1, 1, 0]], dtype=torch.float32)
    for criterion in ("L1", "L2"):
        loss_fn = PixelReconstructionLoss(criterion=criterion)
        loss = loss_fn(pred, target, mask)
        perturbed = pred.detach().clone()
        perturbed[mask == 0] += 100.0
        assert torch.allclose(loss_fn(perturbed, target, mask), loss)
        changed = pred.detach().clone()
        changed[mask == 1] += 1.0
        assert not torch.allclose(loss_fn(changed, target, mask), loss)
        (grad,) = torch.autograd.grad(loss, pred)
        assert torch.count_nonzero(grad[mask == 0]) == 0
        err = (pred - target).abs() if criterion == "L1" else (pred - target).square()
        manual = (err.mean(-1) * mask).sum() / mask.sum()
        assert torch.allclose(loss, manual)


def test_loss_with_nothing_masked_is_zero_not_nan() -> None:
    loss = PixelReconstructionLoss()(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.zeros(2, 3))
    assert loss.item() == 0.0


def test_head_masked_only_end_to_end() -> None:
    model = build_mae()
    x = model.preprocess(images(2))
    latent, mask, ids_restore = model.backbone(x)
    pred = model.neck(latent, ids_restore)[0].detach().requires_grad_(True)
    loss = model.head.loss(pred, x, mask)["loss"]
    (grad,) = torch.autograd.grad(loss, pred)
    assert torch.count_nonzero(grad[mask == 0]) == 0 and torch.count_nonzero(grad[mask == 1]) > 0


# ----------------------------------------------------------------------------- model


def test_gradients_reach_encoder_and_decoder() -> None:
    model = build_mae()
    model.loss(images(4))["loss"].backward()
    fixed = {"backbone.pos_embed", "neck.decoder_pos_embed"}
    for name, param in model.named_parameters():
        if name in fixed:
            assert not param.requires_grad and param.grad is None, name
            continue
        assert param.grad is not None and torch.count_nonzero(param.grad) > 0, name


def test_state_dict_round_trip(tmp_path: Path) -> None:
    model = build_mae(seed=0)
    path = tmp_path / "mae.safetensors"
    save_file(model.state_dict(), str(path))
    other = build_mae(seed=1)
    x = images(3)
    torch.manual_seed(5)
    before = other.loss(x)["loss"]
    other.load_state_dict(load_file(str(path)))
    torch.manual_seed(5)
    after = other.loss(x)["loss"]
    torch.manual_seed(5)
    assert torch.equal(after, model.loss(x)["loss"]) and not torch.equal(before, after)


def test_inputs_uint8_float_and_views_agree() -> None:
    model = build_mae()
    x = images(2)
    results = []
    for inputs in (x, x.float(), [x, images(2, seed=9)]):
        torch.manual_seed(3)
        results.append(model.loss(inputs)["loss"])
    assert torch.allclose(results[0], results[1]) and torch.allclose(results[0], results[2])


def test_rectangular_and_other_sizes() -> None:
    model = build_mae(img=[32, 48])
    assert model.loss(images(2, 32, 48))["loss"].isfinite()
    # Built for 32x48, run on 48x64: both sin-cos tables are computed for the new grid.
    assert model.loss(images(2, 48, 64))["loss"].isfinite()
    square = build_mae()
    assert square.loss(images(2, 24, 40))["loss"].isfinite()
    with pytest.raises(PretrainError, match="do not tile"):
        square.loss(images(2, 30, 32))


def test_reconstruct_outputs() -> None:
    model = build_mae()
    x = images(2)
    out = model.reconstruct(x)
    assert set(out) == {"input", "masked", "reconstruction", "prediction", "mask"}
    assert torch.allclose(out["input"], x.float(), atol=1e-3)
    visible = out["mask"].expand_as(out["input"]) == 0
    assert torch.allclose(out["reconstruction"][visible], x.float()[visible], atol=1e-3)
    assert torch.count_nonzero(out["masked"][~visible]) == 0


def test_loss_falls_when_training() -> None:
    torch.manual_seed(0)
    model = build_mae(norm_pix=False)
    # Smooth images (random plane waves): masked patches are predictable from visible ones.
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    freq = torch.rand(4, 3, 2, 1, 1) * 0.3
    x = 128 + 100 * torch.sin(freq[:, :, 0] * rows + freq[:, :, 1] * cols)  # (4, 3, 32, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = model.loss(x)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first


def test_predict_is_a_clear_error() -> None:
    model = build_mae()
    assert isinstance(model, BaseSelfSupervisor)
    with pytest.raises(PretrainError, match="no predictions"):
        model.predict(images(1))


def test_mae_vit_b16_param_count() -> None:
    spec = {
        "model": {
            "type": "MAE",
            "backbone": {"type": "MAEViT", "arch": "b", "patch_size": 16, "mask_ratio": 0.75},
            "neck": {
                "type": "MAEPretrainDecoder", "embed_dim": 768, "decoder_embed_dim": 512,
                "decoder_depth": 8, "decoder_num_heads": 16,
            },
            "head": {"type": "MAEPretrainHead", "norm_pix": True, "patch_size": 16},
        }
    }
    with torch.device("meta"):
        model = pretrain.build_model(spec)
    count = sum(p.numel() for p in model.parameters())
    assert count == 111_907_840  # MMPretrain: 111.91 M, frozen position embeddings included
    assert abs(count / 1e6 - 111.91) <= 0.01


# ----------------------------------------------------------------------------- validation


def spec_issues(spec: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        pretrain.validate_spec(spec)
    return {i.loc: i.msg for i in info.value.issues}


def test_validation_errors() -> None:
    spec = mae_spec(patch=16, mask_ratio=0.1)  # 4 patches, keeps round(3.6) = 4: nothing masked
    assert "masks none" in spec_issues(spec)["model.backbone.mask_ratio"]
    spec = mae_spec()
    spec["model"]["backbone"]["arch"] = {**ENC, "embed_dims": 30, "num_heads": 3}
    assert "divisible by 4" in spec_issues(spec)["model.backbone.arch"]
    spec = mae_spec()
    spec["model"]["neck"]["num_patches"] = 15
    assert "square" in spec_issues(spec)["model.neck.num_patches"]
    spec = mae_spec()
    spec["model"]["mean"] = [0.0, 0.0]
    assert "mean has 2" in spec_issues(spec)["model.std"]


def test_part_mismatch_is_a_clear_build_error() -> None:
    spec = mae_spec()
    spec["model"]["head"]["patch_size"] = 4
    with pytest.raises(PretrainError, match="patch_size"):
        pretrain.build_model(spec)
    spec = mae_spec()
    spec["model"]["neck"]["embed_dim"] = 64
    with pytest.raises(PretrainError, match="embed_dim = 32"):
        pretrain.build_model(spec)


# ----------------------------------------------------------------------------- HOG


def hog_reference(img: np.ndarray, nbins: int, pool: int, gw: int, patch: int, kernel: str) -> np.ndarray:
    """Slow, loop-by-loop HOG of one (C, H, W) image, laid out as HOGGenerator's (L, D)."""
    c_n, h, w = img.shape
    pad = np.pad(img.astype(np.float64), ((0, 0), (1, 1), (1, 1)), mode="reflect")
    if kernel == "sobel":
        kx = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64)
    else:
        kx = np.array([[0, 0, 0], [1, 0, -1], [0, 0, 0]], dtype=np.float64)
    ky = kx.T
    if gw:
        n = np.arange(gw, dtype=np.float64)
        g = np.exp(-0.5 * ((n - n.mean()) / (gw // 2)) ** 2)
        window = np.outer(g, g) / np.outer(g, g).sum()
    hist = np.zeros((c_n, nbins, h // pool, w // pool))
    for c in range(c_n):
        for i in range(h):
            for j in range(w):
                gx = sum(kx[a, b] * pad[c, i + a, j + b] for a in range(3) for b in range(3))
                gy = sum(ky[a, b] * pad[c, i + a, j + b] for a in range(3) for b in range(3))
                magnitude = math.hypot(gx, gy)
                if gw:
                    magnitude *= window[i % gw, j % gw]
                bin_ = math.floor(math.atan2(gx, gy) / math.pi * nbins) % nbins
                hist[c, bin_, i // pool, j // pool] += magnitude
    norms = np.sqrt((hist**2).sum(axis=1, keepdims=True))
    hist = hist / np.maximum(norms, 1e-12)
    u = patch // pool
    rows = []
    for pr in range(h // patch):
        for pc in range(w // patch):
            rows.append([
                hist[c, b, pr * u + r, pc * u + s]
                for c in range(c_n) for b in range(nbins) for r in range(u) for s in range(u)
            ])
    return np.array(rows)


@pytest.mark.parametrize(
    ("kernel", "gw", "size"), [("sobel", 16, (32, 48)), ("central", 0, (16, 32)), ("sobel", 8, (16, 16))]
)
def test_hog_matches_reference(kernel: str, gw: int, size: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, *size, generator=gen) * 4 - 2
    hog = HOGGenerator(nbins=9, pool=8, gaussian_window=gw, patch_size=16, gradient=kernel)  # type: ignore[arg-type]
    out = hog(x)
    length = (size[0] // 16) * (size[1] // 16)
    assert out.shape == (2, length, 3 * 9 * 4)
    for i in range(2):
        ref = hog_reference(x[i].numpy(), 9, 8, gw, 16, kernel)
        np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-5)


def test_hog_properties() -> None:
    hog = HOGGenerator()
    assert list(hog.parameters()) == [] and hog.state_dict() == {}
    assert hog(torch.full((1, 3, 32, 32), 7.0)).abs().max() == 0  # no gradients, no histogram
    x = torch.randn(2, 3, 224, 224, requires_grad=True)
    out = hog(x)
    assert out.shape == (2, 196, 108) and not out.requires_grad
    cells = hog.cell_histograms(x.detach())
    norms = cells.norm(dim=2)
    assert torch.allclose(norms[norms > 0], torch.ones(()), atol=1e-5)
    # Gratings: intensity varying along the columns (gx only) -> atan2(gx, 0) = ±90° -> bin 4;
    # along the rows (gy only) -> 0° or 180° -> bin 0 (MMPretrain's row-axis convention).
    wave = torch.arange(32.0).sin()
    along_cols = wave.view(1, 1, 1, 32).expand(1, 3, 32, 32)
    along_rows = wave.view(1, 1, 32, 1).expand(1, 3, 32, 32)
    assert (hog.cell_histograms(along_cols).argmax(dim=2) == 4).all()
    assert (hog.cell_histograms(along_rows).argmax(dim=2) == 0).all()


def test_hog_size_errors_and_validation() -> None:
    with pytest.raises(PretrainError, match="do not tile"):
        HOGGenerator()(torch.randn(1, 3, 24, 32))
    with pytest.raises(SpecError) as info:
        build_from_spec("target_generator", {"type": "HOGGenerator", "patch_size": 12, "pool": 8})
    assert "target_generator.patch_size" in {i.loc for i in info.value.issues}
