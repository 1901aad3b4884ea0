"""Transformer maps against references written here from each paper's formula, on timm's own (unfused) attention weights."""

from __future__ import annotations

import math

import pytest
import torch
from test_transformers import timm_unfused_attentions

import attnviz
from attnviz.maps.transformer import cls_maps, dino_mask, mean_attention_distance, rollout, rollout_map

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def vit() -> tuple[list, list[torch.Tensor], tuple[int, int]]:
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=(64, 96), depth=4).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), attnviz.capture(model) as cap:
        model(x)
    return list(cap.records.values()), timm_unfused_attentions(model, x), (4, 6)


def test_class_token_maps(vit) -> None:  # type: ignore[no-untyped-def]
    recs, ref, (h, w) = vit
    torch.testing.assert_close(cls_maps(recs[-1]), ref[-1][0, :, 0, 1:].reshape(-1, h, w), atol=1e-5, rtol=0)


def dino_reference(att: torch.Tensor, threshold: float) -> torch.Tensor:
    """DINO's visualize_attention: sort ascending, keep where the cumulative mass exceeds 1 − threshold, un-sort."""
    val, idx = torch.sort(att)
    val = val / val.sum(1, keepdim=True)
    th = torch.cumsum(val, 1) > (1 - threshold)
    idx2 = torch.argsort(idx)
    return torch.stack([th[h][idx2[h]] for h in range(att.shape[0])])


def test_dino_mask_keeps_60_percent_of_the_mass(vit) -> None:  # type: ignore[no-untyped-def]
    recs, _, (h, w) = vit
    maps = cls_maps(recs[-1])
    got = dino_mask(maps, 0.6)
    assert torch.equal(got.flatten(1), dino_reference(maps.flatten(1), 0.6))
    kept = (maps * got).flatten(1).sum(1) / maps.flatten(1).sum(1)
    assert bool((kept >= 0.6 - 1e-6).all())
    with pytest.raises(ValueError, match="keep"):
        dino_mask(maps, 0.0)


def rollout_reference(atts: list[torch.Tensor], fusion: str, discard: float) -> torch.Tensor:
    """Abnar & Zuidema: Â = 0.5·A + 0.5·I, rows renormalised, multiplied from the first layer up."""
    n = atts[0].shape[-1]
    result = torch.eye(n)
    for a in atts:
        fused = {"mean": a[0].mean(0), "max": a[0].max(0).values, "min": a[0].min(0).values}[fusion]
        if discard:
            flat = fused.flatten().clone()
            order = torch.argsort(flat)[: int(flat.numel() * discard)]
            flat[order[order != 0]] = 0
            fused = flat.reshape(n, n)
        ah = 0.5 * fused + 0.5 * torch.eye(n)
        ah = ah / ah.sum(1, keepdim=True)
        result = ah @ result
    return result


@pytest.mark.parametrize(("fusion", "discard"), [("mean", 0.0), ("max", 0.0), ("min", 0.0), ("mean", 0.9)])
def test_rollout_equals_the_papers_formula(vit, fusion: str, discard: float) -> None:  # type: ignore[no-untyped-def]
    recs, ref, (h, w) = vit
    expected = rollout_reference(ref, fusion, discard)
    torch.testing.assert_close(rollout(recs, head_fusion=fusion, discard_ratio=discard), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rollout_map(recs, 0, head_fusion=fusion, discard_ratio=discard), expected[0, 1:].reshape(h, w), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rollout_map(recs, (2, 3), head_fusion=fusion, discard_ratio=discard), expected[1 + 2 * w + 3, 1:].reshape(h, w),
                               atol=1e-5, rtol=1e-4)


def test_mean_attention_distance_equals_a_brute_force_sum(vit) -> None:  # type: ignore[no-untyped-def]
    recs, ref, (h, w) = vit
    patch = 16
    got = mean_attention_distance(recs[1], (patch, patch))
    a = ref[1][0, :, 1:, 1:]
    heads = []
    for hd in range(a.shape[0]):
        total = 0.0
        for qi in range(h * w):
            qy, qx = divmod(qi, w)
            row = a[hd, qi] / a[hd, qi].sum()
            total += sum(float(row[ki]) * math.dist((qy * patch, qx * patch), (ki // w * patch, ki % w * patch)) for ki in range(h * w))
        heads.append(total / (h * w))
    torch.testing.assert_close(got, torch.tensor(heads), rtol=1e-4, atol=1e-4)


def test_gradient_rollout_equals_chefers_formula_on_the_unfused_path() -> None:
    """Chefer, Gur & Wolf (2021): R ← R + E_h[(∇A ⊙ A)⁺]·R, with A and ∇A read on timm's explicit path; ours runs the fused one."""
    import copy

    from attnviz.maps.transformer import gradient_rollout

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=(64, 96), depth=3, num_classes=5).eval()
    x = torch.randn(1, 3, 64, 96)
    target = 2
    ref_model = copy.deepcopy(model)
    kept: list[torch.Tensor] = []
    for blk in ref_model.blocks:
        blk.attn.fused_attn = False

        def keep(mod, args):  # type: ignore[no-untyped-def]
            args[0].retain_grad()
            kept.append(args[0])

        blk.attn.attn_drop.register_forward_pre_hook(keep)
    ref_model(x)[0, target].backward()
    r = torch.eye(kept[0].shape[-1])
    for a in kept:
        cam = (a.grad[0] * a[0]).clamp(min=0).mean(0).detach()
        r = r + cam @ r
    got = gradient_rollout(model, x, target)
    torch.testing.assert_close(got, r[0, 1:], atol=1e-6, rtol=1e-4)
    assert got.shape == (24,) and all(p.grad is None for p in model.parameters())  # the user's model is left as it was


def _row_loop_distance(rec, image_hw: tuple[int, int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The ViT paper's mean attention distance from every query's drawn row, one query and head at a time."""
    h, w = rec.hw
    ch, cw = image_hw[0] / h, image_hw[1] / w
    out = []
    for head in range(rec.heads):
        total = 0.0
        for qy in range(h):
            for qx in range(w):
                r = rec.row(qy, qx, head=head).double()
                d = torch.tensor([[math.dist((qy * ch, qx * cw), (ky * ch, kx * cw)) for kx in range(w)] for ky in range(h)])
                total += float((r * d).sum() / r.sum())
        out.append(total / (h * w))
    return torch.tensor(out)


@pytest.mark.parametrize("impl", ["timm", "hf"])
def test_window_distance_of_shifted_and_padded_windows_equals_the_row_by_row_sum(impl: str) -> None:
    """Swin at a size its window does not divide (18 cells, windows of 4): timm rolls then pads, HF pads then rolls. The
    distance of every window at once (``WindowAffinity.cells``) equals the sum over each query's drawn row, whose keys are
    in image coordinates (checked against the eager weights in test_transformers), renormalised over the keys on the image."""
    from attnviz.maps import mean_row_distance

    torch.manual_seed(0)
    x = torch.randn(1, 3, 72, 72, generator=torch.Generator().manual_seed(0))
    if impl == "timm":
        model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=72, window_size=4, embed_dim=16,
                                  depths=(2,), num_heads=(2,), num_classes=3).eval()
        with torch.no_grad():
            for blk in model.layers[0].blocks:
                blk.attn.qkv.weight.mul_(8)  # rows far from uniform, so a misplaced key changes the distance
    else:
        transformers = pytest.importorskip("transformers")
        cfg = transformers.SwinConfig(image_size=72, patch_size=4, embed_dim=16, depths=[2], num_heads=[2], window_size=4)
        model = transformers.SwinModel(cfg).eval()
    with torch.no_grad(), attnviz.capture(model) as cap:
        model(x)
    recs = [r for r in cap.records.values() if r.kind == "window"]
    assert len(recs) == 2 and recs[1].shift != (0, 0) and recs[1].grid_hw == (20, 20) and recs[1].hw == (18, 18)
    for rec in recs:
        torch.testing.assert_close(mean_row_distance(rec, (72, 72)), _row_loop_distance(rec, (72, 72)).float(), rtol=1e-5, atol=1e-5)
