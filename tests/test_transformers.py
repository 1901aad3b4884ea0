"""Vision transformers: captured rows on the fused path equal the explicit attention of the original code.

Oracles, all at random init (no hub weights): timm's own unfused path of the same module (``fused_attn = False``,
weights read from ``attn_drop``'s input), and Hugging Face ``transformers`` in eager mode with
``output_attentions=True``. Captured records are read through their image-grid API; the oracle's token
sequences are mapped to grid cells here, from each architecture's definition (prefix tokens first, then the
patches in row-major order), independently of attnviz's provenance.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

import attnviz
from attnviz.capture.records import Affinity, TokenAttention

timm = pytest.importorskip("timm")
TOL = 1e-5  # attention weights lie in [0, 1]


def analysed(model: torch.nn.Module, tmp_path) -> tuple:  # type: ignore[no-untyped-def]
    """An engine holding ``model`` (as "m") and its analysis of a seeded random image of the card's input size."""
    import numpy as np
    from PIL import Image

    from attnviz.analysis import Catalog, Engine, Entry

    engine = Engine(Catalog([Entry("m", True, loader=lambda: model)], torch.device("cpu")))
    h, w = model.card["input_size"]
    path = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return engine, engine.analyze(path, "m")


def timm_unfused_attentions(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every block's attention weights ``(B, heads, N, N)`` from timm's explicit path of the same weights."""
    m = copy.deepcopy(model)
    weights: list[torch.Tensor] = []
    for blk in m.blocks:
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(lambda mod, args, out: weights.append(args[0].detach().clone()))
    with torch.no_grad():
        m(x)
    return weights


def unfused_softmaxes(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every softmax output of a copy of ``model`` on ``x`` with every ``fused_attn`` switch off (the explicit path), in order."""
    from test_third_party import OpRecorder

    oracle = copy.deepcopy(model)
    for m in oracle.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    ops = OpRecorder({"softmax"})
    with torch.no_grad(), ops:
        oracle(x)
    return [out for _, out in ops.out]


def seeded_input(batch: int = 1, size: int = 224) -> torch.Tensor:
    """A seeded random input ``(batch, 3, size, size)`` (its own generator: independent of the global seed)."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def seeded_capture(name: str, x: torch.Tensor, fused: bool = True) -> tuple:  # type: ignore[type-arg]
    """A seeded random-init timm model (every ``fused_attn`` switch set to ``fused``) and its capture on ``x``."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = m.fused_attn and fused
    with torch.no_grad(), attnviz.capture(model) as cap:
        model(x)
    return model, cap


def captured_and_kept(name: str, x: torch.Tensor, kept_at: str, explicit: bool = True, fused: bool = True) -> tuple:  # type: ignore[type-arg]
    """A seeded random-init timm model (every ``fused_attn`` switch set to ``fused``), its capture on ``x``, and the input of
    module ``kept_at`` (e.g. an ``attn_drop``: the attention weights) on the same weights' explicit path (its parent's
    ``fused_attn`` off when ``explicit``)."""
    model, cap = seeded_capture(name, x, fused)
    oracle = copy.deepcopy(model)
    kept: list[torch.Tensor] = []
    parent, _, _ = kept_at.rpartition(".")
    if explicit and hasattr(oracle.get_submodule(parent), "fused_attn"):
        oracle.get_submodule(parent).fused_attn = False
    oracle.get_submodule(kept_at).register_forward_pre_hook(lambda m, a: kept.append(a[0].detach().clone()))
    with torch.no_grad():
        oracle(x)
    return model, cap, kept[0]


def check_rows(rec: TokenAttention, a: torch.Tensor, prefix: int, hw: tuple[int, int], cells: list[tuple[int, int]]) -> None:
    """``a``: the oracle's ``(B, heads, P + H·W, P + H·W)`` weights; token of cell (y, x) = P + y·W + x."""
    h, w = hw
    for b in range(a.shape[0]):
        for y, x in cells:
            n = prefix + y * w + x
            for head in [None, *range(a.shape[1])]:
                ref = a[b, :, n].mean(0) if head is None else a[b, head, n]
                torch.testing.assert_close(rec.row(y, x, batch=b, head=head), ref[prefix:].reshape(h, w), atol=TOL, rtol=0)
                torch.testing.assert_close(rec.prefix_mass(y, x, batch=b, head=head), ref[:prefix], atol=TOL, rtol=0)
        for i in range(prefix):
            torch.testing.assert_close(rec.prefix_row(i, batch=b), a[b, :, i, prefix:].mean(0).reshape(h, w), atol=TOL, rtol=0)


@pytest.mark.parametrize(("name", "size", "prefix"), [
    ("vit_small_patch16_224", (64, 96), ["cls"]),  # non-square: a 4×6 grid
    ("deit_tiny_distilled_patch16_224", (64, 64), ["cls", "dist"]),
    ("vit_small_patch14_reg4_dinov2", (56, 70), ["cls", "reg0", "reg1", "reg2", "reg3"]),
])
def test_timm_fused_rows_equal_its_unfused_attention(name: str, size: tuple[int, int], prefix: list[str]) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=size).eval()
    patch = model.patch_embed.patch_size[0]
    hw = (size[0] // patch, size[1] // patch)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        plain = model(x)
    assert all(blk.attn.fused_attn for blk in model.blocks)  # the model runs its fused path, as without attnviz
    with torch.no_grad(), attnviz.capture(model) as cap:
        out = model(x)
    assert torch.equal(out, plain)  # capture changes nothing
    recs = list(cap.records.values())
    assert [r.name for r in recs] == [f"blocks.{i}.attn" for i in range(len(model.blocks))]
    ref = timm_unfused_attentions(model, x)
    cells = [(0, 0), (hw[0] - 1, hw[1] - 1), (hw[0] // 2, 1)]
    for rec, a in zip(recs, ref):
        assert isinstance(rec, TokenAttention) and rec.prefix_tokens == prefix and rec.query_hw == rec.key_hw == hw
        assert rec.heads == model.blocks[0].attn.num_heads
        check_rows(rec, a, len(prefix), hw, cells)


def test_a_model_without_prefix_tokens_and_an_unnamed_prefix() -> None:
    """No class token (global pooling): patches only. A prefix parameter of another name: its place is exact, named tok0."""
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=64, class_token=False, global_pool="avg").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), attnviz.capture(model) as cap:
        model(x)
    rec = cap.records["blocks.0.attn"]
    assert isinstance(rec, Affinity) and rec.query_hw == (4, 4)
    ref = timm_unfused_attentions(model, x)[0]
    torch.testing.assert_close(rec.row(1, 2), ref[0, :, 6].mean(0).reshape(4, 4), atol=TOL, rtol=0)


transformers = pytest.importorskip("transformers", reason="pip install transformers (test extra)")


def hf_pair(cls: type, cfg: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same weights twice: the default (fused SDPA) path, and the eager path that returns attentions."""
    torch.manual_seed(0)
    eager_cfg = copy.deepcopy(cfg)
    cfg._attn_implementation = "sdpa"  # type: ignore[attr-defined]
    fused = cls(cfg).eval()
    eager_cfg._attn_implementation = "eager"  # type: ignore[attr-defined]
    eager = cls(eager_cfg).eval()
    eager.load_state_dict(fused.state_dict())
    return fused, eager


def hf_capture(fused: torch.nn.Module, eager: torch.nn.Module, x: torch.Tensor) -> tuple[attnviz.Capture, tuple[torch.Tensor, ...]]:
    """The fused model captured, and the eager model's own attentions, on the same input."""
    with torch.no_grad(), attnviz.capture(fused) as cap:
        fused(pixel_values=x)
    with torch.no_grad():
        atts = eager(pixel_values=x, output_attentions=True).attentions
    return cap, atts


@pytest.mark.parametrize("which", ["vit", "dinov2_registers"])
def test_hf_rows_equal_eager_attentions(which: str) -> None:
    if which == "vit":
        cfg = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=64, patch_size=8)
        fused, eager = hf_pair(transformers.ViTModel, cfg)
        prefix, size = ["cls"], (64, 64)
    else:
        cfg = transformers.Dinov2WithRegistersConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                                     image_size=56, patch_size=8, num_register_tokens=4)
        fused, eager = hf_pair(transformers.Dinov2WithRegistersModel, cfg)
        prefix, size = ["cls", "reg0", "reg1", "reg2", "reg3"], (56, 72)  # non-square: 7×9 patches (position embeddings interpolated)
    hw = (size[0] // 8, size[1] // 8)
    x = torch.randn(2, 3, *size)
    cap, atts = hf_capture(fused, eager, x)
    recs = list(cap.records.values())
    assert len(recs) == len(atts) == 2
    for rec, a in zip(recs, atts):
        assert isinstance(rec, TokenAttention) and rec.prefix_tokens == prefix and rec.query_hw == hw, (rec.name, rec.prefix_tokens, rec.query_hw)
        assert "fused" in rec.note  # captured on the SDPA path: the model ran exactly as without attnviz
        assert rec.name.endswith("attention") or rec.name.endswith("attention.attention"), rec.name
        check_rows(rec, a, len(prefix), hw, [(0, 0), (hw[0] - 1, hw[1] - 1), (2, 3)])


def test_hf_segformer_reduced_keys_on_their_own_grid() -> None:
    cfg = transformers.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[4, 2], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
                                       decoder_hidden_size=32, patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2])
    fused, eager = hf_pair(transformers.SegformerModel, cfg)
    x = torch.randn(1, 3, 64, 96)
    cap, atts = hf_capture(fused, eager, x)
    recs = list(cap.records.values())
    assert len(recs) == len(atts) == 2
    for rec, a, (qh, qw), (kh, kw) in zip(recs, atts, [(16, 24), (8, 12)], [(4, 6), (4, 6)]):
        assert rec.query_hw == (qh, qw) and rec.key_hw == (kh, kw), (rec.name, rec.query_hw, rec.key_hw)
        for y, xx in [(0, 0), (qh - 1, qw - 1), (3, 5)]:
            for head in [None, *range(a.shape[1])]:
                ref = a[0, :, y * qw + xx].mean(0) if head is None else a[0, head, y * qw + xx]
                torch.testing.assert_close(rec.row(y, xx, head=head), ref.reshape(kh, kw), atol=TOL, rtol=0)


def swin_eager_weights(model: torch.nn.Module, x: torch.Tensor, cap: attnviz.Capture) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The eager path's softmax of every timm Swin window attention on ``x`` (a copy of ``model``), and its blocks; checks
    that ``cap`` recorded every block's attention and nothing was left undrawn."""
    oracle = copy.deepcopy(model)
    weights: dict[str, torch.Tensor] = {}
    for name, mod in oracle.named_modules():
        if type(mod).__name__ == "WindowAttention":
            mod.fused_attn = False
            mod.softmax.register_forward_hook(lambda m, a, out, name=name: weights.__setitem__(name, out.detach().clone()))
    with torch.no_grad():
        oracle(x)
    blocks = {n: m for n, m in model.named_modules() if type(m).__name__ == "SwinTransformerBlock"}
    assert {r.name for r in cap.records.values()} == {f"{n}.attn" for n in blocks} and not cap.seen_not_drawn()
    return weights, blocks


@pytest.mark.parametrize("size", [224, 256])
def test_timm_swin_windows_shifted_or_not_are_exact_in_image_coordinates(size: int) -> None:
    """Every block: a query's row is its window, in unshifted image-grid coordinates, zero outside. Shifted blocks tile the
    image rolled by −s (Swin's cyclic shift): the reference rolls the image cell into the shifted grid, takes its window,
    and rolls the keys back. At 256² the window (7) does not divide the grids (64, 32, 16, 8): timm rolls, then zero-pads
    to 70, 35, 21, 14 and cuts the windows there; the reference cuts the padding off, and its weight is the record's
    outside mass."""
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=size).eval()
    x = seeded_input(1, size)
    with torch.no_grad(), attnviz.capture(model) as cap:
        model(x)
    weights, blocks = swin_eager_weights(model, x, cap)
    ws = 7
    for name, blk in blocks.items():
        rec = cap.records[f"{name}.attn"]
        a = weights[f"{name}.attn"]  # (windows, heads, 49, 49), windows in row-major order of the (shifted, padded) grid
        h, w = rec.query_hw if isinstance(rec, Affinity) else rec.hw  # at 224² the last stage's one window is the whole grid
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        if size == 256:
            assert rec.grid_hw == (hp, wp) != (h, w)
        s = blk.shift_size[0]
        for y, xx in [(0, 0), (h - 1, w - 1), (h // 2 + 1, 3), (2, w - 2)]:
            yi, xi = (y - s) % h, (xx - s) % w  # the image cell's place in the rolled grid (timm rolls before it pads)
            (wy, iy), (wx, ix) = divmod(yi, ws), divmod(xi, ws)
            for head in [None, 0, a.shape[1] - 1]:
                r = a[wy * (wp // ws) + wx, :, iy * ws + ix]
                r = r.mean(0) if head is None else r[head]
                ref = torch.zeros(hp, wp)
                ref[wy * ws:(wy + 1) * ws, wx * ws:(wx + 1) * ws] = r.reshape(ws, ws)
                ref = torch.roll(ref[:h, :w], shifts=(s, s), dims=(0, 1))  # the padding cut off, keys back to their cells
                torch.testing.assert_close(rec.row(y, xx, head=head), ref, atol=TOL, rtol=0)
                if size == 256:
                    assert abs(rec.outside_mass(y, xx, head=head) - (1 - float(ref.sum()))) < 1e-5


def test_torchvision_vit_multihead_attention() -> None:
    """torchvision's ViT runs nn.MultiheadAttention: rows from its own in-projection, against its need_weights=True output."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128).eval()
    x = torch.randn(2, 3, 64, 64)
    normed: list[torch.Tensor] = []
    hooks = [layer.ln_1.register_forward_hook(lambda m, a, out: normed.append(out.detach())) for layer in model.encoder.layers]
    with torch.no_grad():
        plain = model(x)
    for h in hooks:
        h.remove()
    with torch.no_grad(), attnviz.capture(model) as cap:
        out = model(x)
    assert torch.equal(out, plain)
    recs = list(cap.records.values())
    assert [r.name for r in recs] == [f"encoder.layers.encoder_layer_{i}.self_attention" for i in range(2)]
    for rec, layer, y in zip(recs, model.encoder.layers, normed):
        with torch.no_grad():
            _, a = layer.self_attention(y, y, y, need_weights=True, average_attn_weights=False)  # (B, heads, 17, 17)
        assert isinstance(rec, TokenAttention) and rec.prefix_tokens == ["cls"] and rec.query_hw == (4, 4)
        check_rows(rec, a, 1, (4, 4), [(0, 0), (3, 3), (1, 2)])


def test_efficientvit_local_windows_on_the_14x14_map() -> None:
    """EfficientViT-MSRA's cascaded group attention in 7×7 windows of a 14×14 map (once recorded on a 196×1 'grid')."""
    torch.manual_seed(0)
    model = timm.create_model("efficientvit_m0", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    softmaxes = unfused_softmaxes(model, x)
    with torch.no_grad(), attnviz.capture(model) as cap:
        model(x)
    names = [f"stages.0.blocks.0.mixer.m.attn{'' if i == 0 else f'#{i + 1}'}" for i in range(4)]  # one call per cascaded head
    for name, a in zip(names, softmaxes[:4]):
        r = cap.records[name]
        assert r.kind == "window" and r.hw == (14, 14)
        for y, xx in [(0, 0), (13, 13), (5, 9), (8, 2)]:
            (wy, iy), (wx, ix) = divmod(y, 7), divmod(xx, 7)
            ref = torch.zeros(14, 14)
            ref[wy * 7:(wy + 1) * 7, wx * 7:(wx + 1) * 7] = a[wy * 2 + wx, iy * 7 + ix].reshape(7, 7)  # windows in row-major order
            torch.testing.assert_close(r.row(y, xx), ref, atol=TOL, rtol=0)


def test_transformer_views_head_grid_rollout_and_distance(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The Transformer view family: every layer × head for a patch or the class token, rollout over the image, distances."""
    import numpy as np

    from attnviz.analysis import UserError, transformer
    from attnviz.maps.transformer import mean_attention_distance

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=(64, 96), depth=3, num_classes=4).eval()
    model.card = {"input_size": [64, 96], "class_names": ["a", "b", "c", "d"]}
    engine, a = analysed(model, tmp_path)
    maps, names, what = transformer.head_maps(a, 40, 20, "patch")
    assert maps.shape == (3, 3, 4, 6) and names == ["blocks.0.attn", "blocks.1.attn", "blocks.2.attn"] and "pixel (40, 20)" in what
    for i, name in enumerate(names):
        for h in range(3):
            np.testing.assert_allclose(maps[i, h], a.records[name].row(1, 2, head=h).numpy(), atol=TOL)
    cls, _, _ = transformer.head_maps(a, query="cls")
    np.testing.assert_allclose(cls[2, 1], a.records["blocks.2.attn"].prefix_row(0, head=1).numpy(), atol=TOL)
    rgb, info = transformer.rollout_view(a, query="cls")
    assert rgb.ndim == 3 and info["layers"] == 3 and 0 <= info["prefix_share"] <= 1
    dist, _ = transformer.distances(a)
    np.testing.assert_allclose(dist[1], mean_attention_distance(a.records["blocks.1.attn"], (16.0, 16.0)).numpy(), rtol=1e-5)
    assert transformer.head_grid(a, 40, 20).axes and transformer.distance_figure(a).axes
    with pytest.raises(UserError, match="query must be"):
        transformer.head_maps(a, query="nope")
    # a click on a thumbnail of the grid image opens that layer and head
    from attnviz import render

    fig = transformer.head_grid(a, 40, 20)
    grid = render.figure_to_rgb(fig)
    boxes = render.axes_boxes(fig)
    assert len(boxes) == 9 and all(0 <= x0 < x1 <= grid.shape[1] and 0 <= y0 < y1 <= grid.shape[0] for x0, y0, x1, y1 in boxes)
    x0, y0, x1, y1 = boxes[2 * 3 + 1]  # layer 2, head 1
    assert transformer.head_at(a, (x0 + x1) / 2, (y0 + y1) / 2, 40, 20) == (2, 1)
    with pytest.raises(UserError, match="between thumbnails"):
        transformer.head_at(a, 1, 1, 40, 20)
    img, info = transformer.head_view(a, 2, 1, 40, 20)
    assert img.ndim == 3 and info["layer"] == "blocks.2.attn" and info["head"] == 1
    assert info["sum"] == pytest.approx(float(a.records["blocks.2.attn"].row(1, 2, head=1).sum()), rel=1e-5) and "prefix" in info["text"]


def test_head_grid_of_swin_windows_and_what_needs_tokens(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Swin has no token sequence with a class token, but every head of its windowed attention has a row per pixel: the
    head grid shows the first stage's blocks, each head's row placed on the image as a click draws it (zero outside the
    window). Rollout and the class-token view say why they are not there."""
    import numpy as np

    from attnviz.analysis import UserError, transformer
    from attnviz.maps import click_layers, click_map

    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, window_size=7, embed_dim=24,
                              depths=(2, 2), num_heads=(2, 4), num_classes=3).eval()
    model.card = {"input_size": [56, 56], "class_names": ["a", "b", "c"]}
    _, a = analysed(model, tmp_path)
    assert not transformer.token_layers(a)
    maps, names, what = transformer.head_maps(a, 30, 9, "patch")
    assert names == ["layers.0.blocks.0.attn", "layers.0.blocks.1.attn"] and maps.shape == (2, 2, 14, 14) and "pixel (30, 9)" in what
    for i, name in enumerate(names):
        rec = a.records[name]
        assert rec.kind == "window"
        for h in range(2):
            np.testing.assert_allclose(maps[i, h], rec.row(2, 7, head=h).numpy(), atol=TOL)  # pixel (30, 9) → cell (2, 7)
            assert np.count_nonzero(maps[i, h]) == 49  # one 7×7 window
    np.testing.assert_allclose(maps[1, 0], click_map(click_layers(a.records)[names[1]], 30, 9, a.hw, head=0).numpy(), atol=0)
    img, info = transformer.head_view(a, 1, 1, 30, 9)
    assert img.ndim == 3 and info["layer"] == names[1] and "prefix" not in info["text"]
    assert transformer.head_stages(a) == ["14×14 cells, 2 heads, 2 layers", "7×7 cells, 4 heads, 2 layers"]
    maps1, names1, _ = transformer.head_maps(a, 30, 9, "patch", stage=1)  # the second stage: its own 7×7 grid and 4 heads
    assert names1 == ["layers.1.blocks.0.attn", "layers.1.blocks.1.attn"] and maps1.shape == (2, 4, 7, 7)
    for i, name in enumerate(names1):
        for h in range(4):
            np.testing.assert_allclose(maps1[i, h], click_map(click_layers(a.records)[name], 30, 9, a.hw, head=h).numpy(), atol=0)
    assert transformer.head_view(a, 1, 3, 30, 9, stage=1)[1]["layer"] == names1[1]
    with pytest.raises(UserError, match=r"stage must be in \[0, 2\)"):
        transformer.head_maps(a, 30, 9, "patch", stage=2)
    with pytest.raises(UserError, match="class-token view, rollout or distance plot"):
        transformer.rollout_view(a)
    with pytest.raises(UserError, match="class-token view"):
        transformer.head_maps(a, query="cls")
    import gradio as gr

    from attnviz.analysis import Style
    from attnviz.ui.common import ViewState
    from attnviz.ui.tabs.transformer import TransformerTab

    with gr.Blocks():
        tab = TransformerTab(None)  # type: ignore[arg-type]
        tab.build()
    out = tab.fill(a, ViewState((30.0, 9.0), None, None, None, Style()))
    assert out[tab.grid]["visible"] and out[tab.grid]["value"].ndim == 3 and not out[tab.rollout]["visible"] and out[tab.note] == ""
    assert "windowed" in out[tab.answer] and "2 or 4 heads" in out[tab.answer] and not out[tab.grad_btn]["visible"]
    assert out[tab.distance]["visible"] and "leaves out" not in out[tab.answer]
    assert out[tab.stage]["visible"] and out[tab.stage]["choices"] == transformer.head_stages(a)
    dist, plotted = transformer.distances(a)  # windowed layers: the mean over every query of its own row
    assert plotted == [*names, "layers.1.blocks.0.attn", "layers.1.blocks.1.attn"] and dist.shape == (4, 4)
    assert np.isnan(dist[:2, 2:]).all() and not np.isnan(dist[2:]).any()  # 2 heads in stage 0, 4 in stage 1
    rec = a.records[names[1]]  # the shifted windows
    for h in range(2):
        ref = []
        for qy in range(14):
            for qx in range(14):
                r = rec.row(qy, qx, head=h).double()
                d = torch.tensor([[((4 * (ky - qy)) ** 2 + (4 * (kx - qx)) ** 2) ** 0.5 for kx in range(14)] for ky in range(14)])
                ref.append(float((r * d).sum() / r.sum()))  # 4 image pixels per cell of the 14×14 grid
        assert dist[1, h] == pytest.approx(np.mean(ref), rel=1e-5)


def test_gradient_rollout_view_in_the_analysis_layer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    from PIL import Image

    from attnviz.analysis import Catalog, Engine, Entry, UserError, transformer
    from attnviz.maps.transformer import gradient_rollout

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=64, depth=2, num_classes=3).eval()
    model.card = {"input_size": [64, 64], "class_names": ["a", "b", "c"]}
    engine = Engine(Catalog([Entry("vit", True, loader=lambda: model)], torch.device("cpu")))
    path = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
    a = engine.analyze(path, "vit")
    img, info = transformer.gradient_rollout_view(engine, a)
    assert img.ndim == 3 and info["class"] == a.label(int(a.logits.argmax()))
    assert gradient_rollout(model, a.x, int(a.logits.argmax())).shape == (16,)
    with pytest.raises(UserError, match="target must be"):
        transformer.gradient_rollout_view(engine, a, target=7)


def test_hf_swin_windows_match_eager_attentions_in_every_stage() -> None:
    """HF Swin: each stage's shifted block (HF returns each stage's last block's attentions) equals the eager attentions, rolled
    back to image cells — stage 1 too, after HF's patch merging (strided slices x[:, k::2, l::2] joined along the channels),
    on its 8×8 grid of 2×2 blocks."""
    cfg = transformers.SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4)
    fused, eager = hf_pair(transformers.SwinModel, cfg)
    x = torch.randn(1, 3, 64, 64)
    cap, atts = hf_capture(fused, eager, x)
    ws, s = 4, 2
    for stage, (h, heads) in enumerate([(16, 2), (8, 4)]):
        a = atts[stage]  # its last block (shifted): ((h/ws)², heads, ws², ws²)
        w = h
        rec = cap.records[f"encoder.layers.{stage}.blocks.1.attention"]
        assert rec.hw == (h, w) and rec.shift == ((-s) % h, (-s) % w)  # the roll the windows tile, modulo the grid
        for y, xx in [(0, 0), (h - 1, w - 1), (6, 5), (1, w - 2)]:
            yi, xi = (y - s) % h, (xx - s) % w  # the cell's place in the rolled grid
            (wy, iy), (wx, ix) = divmod(yi, ws), divmod(xi, ws)
            for head in [None, 0, heads - 1]:
                r = a[wy * (w // ws) + wx, :, iy * ws + ix]
                ref = torch.zeros(h, w)
                ref[wy * ws:(wy + 1) * ws, wx * ws:(wx + 1) * ws] = (r.mean(0) if head is None else r[head]).reshape(ws, ws)
                torch.testing.assert_close(rec.row(y, xx, head=head), torch.roll(ref, shifts=(s, s), dims=(0, 1)), atol=TOL, rtol=0)
    assert {r.name for r in cap.records.values()} == {f"encoder.layers.{i}.blocks.{j}.attention" for i in range(2) for j in range(2)}
    assert not cap.seen_not_drawn()


def test_hf_swin_at_a_size_its_window_does_not_divide() -> None:
    """HF Swin at 72² (18 cells, windows of 4): HF pads the map to 20 first and then rolls the padded map, the other order
    from timm's. Each stage's shifted block equals the eager attentions: rolled back on the padded grid, the padding cut off."""
    cfg = transformers.SwinConfig(image_size=72, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4)
    fused, eager = hf_pair(transformers.SwinModel, cfg)
    x = torch.randn(1, 3, 72, 72, generator=torch.Generator().manual_seed(0))
    cap, atts = hf_capture(fused, eager, x)
    ws, s = 4, 2
    for stage, (h, heads) in enumerate([(18, 2), (9, 4)]):
        a = atts[stage]  # its last block (shifted): ((hp/ws)², heads, ws², ws²)
        hp = -(-h // ws) * ws
        rec = cap.records[f"encoder.layers.{stage}.blocks.1.attention"]
        assert rec.hw == (h, h) and rec.grid_hw == (hp, hp)
        for y, xx in [(0, 0), (h - 1, h - 1), (6, 5), (1, h - 2)]:
            yi, xi = (y - s) % hp, (xx - s) % hp  # padded first, then rolled on the padded grid
            (wy, iy), (wx, ix) = divmod(yi, ws), divmod(xi, ws)
            for head in [None, 0, heads - 1]:
                r = a[wy * (hp // ws) + wx, :, iy * ws + ix]
                ref = torch.zeros(hp, hp)
                ref[wy * ws:(wy + 1) * ws, wx * ws:(wx + 1) * ws] = (r.mean(0) if head is None else r[head]).reshape(ws, ws)
                ref = torch.roll(ref, shifts=(s, s), dims=(0, 1))[:h, :h]
                torch.testing.assert_close(rec.row(y, xx, head=head), ref, atol=TOL, rtol=0)
    assert {r.name for r in cap.records.values()} == {f"encoder.layers.{i}.blocks.{j}.attention" for i in range(2) for j in range(2)}
    assert not cap.seen_not_drawn()


def test_maxvit_grid_attention_is_placed_on_its_dilated_grid() -> None:
    """MaxViT's grid attention (a g×g grid of cells H/g apart, one per offset): each row at its own pixels. Its within-grid
    axes alone look like a coarser grid; the offsets folded into the batch say they are not (a regression the sweep found)."""
    torch.manual_seed(0)
    model = timm.create_model("maxvit_pico_rw_256", pretrained=False).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad(), attnviz.capture(model) as cap:
        model(x)
    oracle = copy.deepcopy(model)
    kept: list[torch.Tensor] = []
    attn = oracle.stages[0].blocks[0].attn_grid.attn
    attn.fused_attn = False
    attn.attn_drop.register_forward_pre_hook(lambda m, a: kept.append(a[0].detach().clone()))
    with torch.no_grad():
        oracle(x)
    rec = cap.records["stages.0.blocks.0.attn_grid.attn"]
    a = kept[0]  # (offsets, heads, g·g, g·g)
    h, w = rec.hw
    g = 8
    sh, sw = h // g, w // g  # cells of one grid lie sh rows / sw columns apart
    for y, xx in [(0, 0), (h - 1, w - 1), (13, 42)]:
        (gy, i), (gx, j) = divmod(y, sh), divmod(xx, sw)
        for head in [None, 0]:
            r = a[i * sw + j, :, gy * g + gx]
            ref = torch.zeros(h, w)
            ref[i::sh, j::sw] = (r.mean(0) if head is None else r[head]).reshape(g, g)
            torch.testing.assert_close(rec.row(y, xx, head=head), ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["xcit_nano_12_p16_224", "edgenext_xx_small"])
def test_cross_covariance_attention_is_a_block_diagonal_channel_affinity(name: str) -> None:
    """XCiT / EdgeNeXt attend over channels, each head within its own channel group: the record is the module's own weights
    (read from ``attn_drop``), head g's block at channels g·C/h …, and nothing between groups (a mean over heads would mix
    unrelated channels)."""
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False).eval()
    ref: dict[str, torch.Tensor] = {}
    for n, mod in m.named_modules():
        if type(mod).__name__ in ("XCA", "CrossCovarianceAttn"):
            mod.attn_drop.register_forward_hook(lambda mod_, args, out, n=n: ref.__setitem__(n, out.detach().clone()))
    with torch.no_grad(), attnviz.capture(m) as cap:
        m(torch.randn(2, 3, 224, 224))
    recs = {k.rsplit(".channel_affinity", 1)[0]: r for k, r in cap.records.items() if r.kind == "channel_affinity"}
    assert set(recs) == set(ref) and ref
    for n, w in ref.items():  # (B, heads, C/h, C/h)
        b, heads, c, _ = w.shape
        expected = torch.zeros(b, heads * c, heads * c)
        for g in range(heads):
            expected[:, g * c : (g + 1) * c, g * c : (g + 1) * c] = w[:, g]
        assert recs[n].groups == heads
        torch.testing.assert_close(recs[n].matrix, expected, atol=TOL, rtol=0)


def test_mobilevit_attention_is_a_dilated_grid_named_after_its_module() -> None:
    """MobileViT unfolds the map into 2×2 patches and attends across patches at one intra-patch offset: a query sees the
    cells 2 apart that share its offset. Rows equal timm's explicit path, mapped by the unfolding's own definition
    (batch row b·4 + offset, token = patch index); the record says "dilated grid" and is named after its attention module."""
    torch.manual_seed(0)
    model = timm.create_model("mobilevit_xxs", pretrained=False).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad(), attnviz.capture(model) as cap:
        model(x)
    oracle = copy.deepcopy(model)
    attn = oracle.stages[3][1].transformer[0].attn
    attn.fused_attn = False
    kept: list[torch.Tensor] = []
    attn.attn_drop.register_forward_pre_hook(lambda m, a: kept.append(a[0].detach().clone()))
    with torch.no_grad():
        oracle(x)
    rec = cap.records["stages.3.1.transformer.0.attn"]
    assert rec.layout() == "dilated grid: 8×8 cells 2×2 apart on a 16×16 grid"
    a = kept[0]  # (4 offsets, heads, 64 patches, 64 patches)
    ph = pw = 2
    nw = 8
    for y, xx in [(0, 0), (5, 9), (15, 14), (8, 3)]:
        (py, iy), (px, ix) = divmod(y, ph), divmod(xx, pw)
        for head in [None, 0, a.shape[1] - 1]:
            r = a[iy * pw + ix, :, py * nw + px]  # (heads, 64)
            r = r.mean(0) if head is None else r[head]
            ref = torch.zeros(16, 16)
            ref[iy::ph, ix::pw] = r.reshape(8, 8)
            torch.testing.assert_close(rec.row(y, xx, head=head), ref, atol=TOL, rtol=0)


def test_hover_payload_of_a_token_layer_gives_the_rows_the_server_gives(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Hover for transformers: the page receives q and k with the prefix tokens (class, distillation) and forms each row as
    the page's script does — softmax over every key, the patch keys drawn. Replayed here in numpy: equal to the record's row."""
    import base64

    import numpy as np

    from attnviz.ui.hover import payload

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=(64, 96), depth=2, num_classes=4).eval()
    model.card = {"input_size": [64, 96], "class_names": ["a", "b", "c", "d"]}
    engine, a = analysed(model, tmp_path)
    p = payload(a, "blocks.1.attn", "row")
    assert p["id"] and p["kind"] == "affinity" and (p["pq"], p["pk"]) == (2, 2) and (p["fh"], p["fw"]) == (4, 6)

    def arr(key: str) -> np.ndarray:
        return np.frombuffer(base64.b64decode(p["data"][key]), dtype=np.float32)

    q, k = arr("q").reshape(p["heads"], p["n"], p["d"]), arr("k").reshape(p["heads"], p["d"], p["m"] + p["pk"])
    for cy, cx in [(0, 0), (3, 5), (2, 1)]:
        logits = np.einsum("hd,hdm->hm", q[:, p["pq"] + cy * p["fw"] + cx].astype(np.float64), k.astype(np.float64)) * p["scale"]
        rows = np.exp(logits - logits.max(1, keepdims=True))
        rows /= rows.sum(1, keepdims=True)
        page = rows[:, p["pk"]:].mean(0).reshape(p["kh"], p["kw"])
        np.testing.assert_allclose(page, a.records["blocks.1.attn"].row(cy, cx).numpy(), atol=TOL)
    assert not payload(a, "blocks.1.attn", "cls")["id"]  # the class token's map does not follow the pointer


def test_a_backbone_without_classes_is_analysed_as_features(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A DINO-style backbone (no head, card task "features"): its attention is analysed as for any ViT; nothing pretends to be
    a class — no prediction, attributions and gradient rollout say why, ablation reports how much the features move."""

    from attnviz.analysis import UserError, attributions, modules, transformer
    from attnviz.atlas import AtlasOptions, Item, Source, run_atlas
    from attnviz.ui.sidebar import headline

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=64, depth=2, num_classes=0).eval()
    model.card = {"input_size": [64, 64], "task": "features"}
    engine, a = analysed(model, tmp_path)
    path = tmp_path / "img.png"
    assert a.task == "features" and a.logits.shape == (384,) and a.top() == {}
    assert "384 features, no classes" in headline(a, None)
    assert transformer.head_grid(a, 30, 30).axes
    with pytest.raises(UserError, match="backbone without classes"):
        attributions.compare(engine, a)
    with pytest.raises(UserError, match="backbone without classes"):
        transformer.gradient_rollout_view(engine, a)
    _, info = modules.ablate(engine, a, "blocks.1.attn")
    assert info["relative_feature_change"] > 0 and -1 <= info["cosine_similarity"] <= 1
    out = run_atlas(model, Source([Item(str(path))]), tmp_path / "atlas", AtlasOptions(workers=0))
    assert out["task"] == "features" and "accuracy" not in out["metrics"]


def test_levit_last_stage_rows_sit_on_blocks_that_overhang_the_image(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """LeViT's attention downsample at stage 2 takes every other cell of a 7×7 grid (7 is odd): its 4×4 queries are cells 0,
    2, 4, 6, i.e. blocks of 2×2 cells of 32 px whose last row and column run 32 px past a 224² image. Rows of the downsample
    and of the stage's blocks equal timm's softmax for both images of a batch, drawn over the pixels of each key's block
    inside the image (a token → pixel map written here from the subsample's slicing). Once "seen, not drawn"."""
    from attnviz.maps import click_layers, click_map, on_image
    from attnviz.maps.stats import layer_rows

    x = seeded_input(2)
    torch.manual_seed(0)
    model = timm.create_model("levit_128s", pretrained=False).eval()
    with torch.no_grad():  # timm starts the batch norms of q and k at one scale and the biases at 0: every row uniform
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.weight.normal_(1.0, 0.5)
        for n, p in model.named_parameters():
            if n.endswith("attention_biases"):
                p.normal_(0.0, 1.0)
        with attnviz.capture(model) as cap:
            model(x)
    soft = unfused_softmaxes(model, x)  # stage 0: 2 blocks; stage 1: downsample + 3; stage 2: downsample + 4
    assert min(float(a.mean(1).std()) for a in soft) > 1e-3  # rows that differ from key to key
    assert len(soft) == 11 and not [n for n, r in cap.records.items() if r.kind == "spatial"]
    assert not cap.seen_not_drawn()
    assert cap.records["stages.1.downsample.attn_downsample"].query_hw == (7, 7)  # 14 → 7: even, no overhang
    assert cap.records["stages.1.downsample.attn_downsample"].query_cells is None
    block = torch.arange(224) // 64  # pixel → row (column) of the 4×4 grid: token i covers pixels [64 i, 64 i + 64)
    for name, a in [("stages.2.downsample.attn_downsample", soft[6]), ("stages.2.blocks.0.attn", soft[7]), ("stages.2.blocks.3.attn", soft[10])]:
        rec = cap.records[name]
        down = "downsample" in name
        assert rec.kind == "affinity" and rec.query_hw == (4, 4) and rec.query_cells == (2, 2, 7, 7)
        assert rec.key_cells == (None if down else (2, 2, 7, 7)) and rec.key_hw == ((7, 7) if down else (4, 4))
        layer = click_layers(cap.records)[name]
        for b in range(2):
            for px, py in [(0, 0), (223, 223), (200, 10), (127, 128), (64, 191)]:
                q = int(block[py]) * 4 + int(block[px])
                r = a[b, :, q].mean(0)  # (keys,)
                ref = r.reshape(7, 7).repeat_interleave(32, 0).repeat_interleave(32, 1) if down else r[block[:, None] * 4 + block[None, :]]
                drawn = click_map(layer, px, py, (224, 224), batch=b)  # (7, 7): the cells that tile the image
                torch.testing.assert_close(drawn.repeat_interleave(32, 0).repeat_interleave(32, 1), ref, atol=TOL, rtol=0)
                torch.testing.assert_close(click_map(layer, px, py, (224, 224), batch=b, native=True).flatten(), r, atol=TOL, rtol=0)
        assert torch.equal(on_image(rec.row(3, 3), rec.key_cells), click_map(layer, 223, 223, (224, 224)))
    lr = layer_rows("stages.2.blocks.0.attn", [cap.records["stages.2.blocks.0.attn"]], 0, (224, 224))
    centres = (torch.arange(4) * 64 + 32).double()  # the blocks' centres: the last one on the image's edge
    assert torch.equal(lr.key_px.double(), torch.stack(torch.meshgrid(centres, centres, indexing="ij"), -1).reshape(16, 2))
    levit_in_the_app(model, tmp_path)


def levit_in_the_app(model: nn.Module, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The app's answer for LeViT's last stage: the query block under the pixel, 64-pixel cells, sums over the 16 keys,
    the peak marked inside the image, the blocks in the exported summary, and hover declined (it draws uniform grids)."""
    from attnviz.analysis.views import click, modules
    from attnviz.ui import hover

    model.card = {"input_size": [224, 224], "class_names": [f"c{i}" for i in range(1000)]}
    _, a = analysed(model, tmp_path)
    img, info, m = click.attention_at(a, 200, 100, layer="stages.2.blocks.3.attn")
    assert m.shape == (7, 7) and info["feature_cell"] == [1, 3] and info["feature_hw"] == [4, 4] and info["cell_size_px"] == [64.0, 64.0]
    assert abs(info["sum"] - 1) < 1e-5 and info["peak"]["x"] < 224 and info["peak"]["y"] < 224 and "overhang" in info
    facts = modules.summary(a)["click_layers"]["stages.2.blocks.3.attn"]
    assert facts["query_cells"] == facts["key_cells"] == [2, 2, 7, 7] and facts["key_hw"] == [4, 4]
    assert hover.payload(a, "stages.2.blocks.3.attn", None)["id"] == ""
    import numpy as np

    from attnviz.analysis import transformer
    from attnviz.maps.transformer import mean_attention_distance

    dist, names = transformer.distances(a)  # no class token: LeViT's global layers, without the overhanging last stage
    assert names == [n for n in a.records if not n.startswith("stages.2")] and dist.shape == (6, 8)
    np.testing.assert_allclose(dist[2, :8], mean_attention_distance(a.records[names[2]], (32.0, 32.0)).numpy(), rtol=1e-6)
    maps, grid_names, _ = transformer.head_maps(a, 100, 100)
    assert grid_names == ["stages.0.blocks.0.attn", "stages.0.blocks.1.attn"] and maps.shape == (2, 4, 14, 14)


@pytest.mark.parametrize(("block", "hw", "win"), [("stages.0.blocks.1", 56, 7), ("stages.2.blocks.3", 14, 14), ("stages.0.blocks.0", 56, 7)])
def test_gcvit_global_query_rows_sit_at_the_output_cell_they_make(block: str, hw: int, win: int) -> None:
    """GCViT's global blocks: every window's 49 queries are one pooled grid of the stage map (shared by all windows), so
    their grid says nothing about where a row goes; the block's window_reverse puts query i of window w at window w's
    cell i. Rows there, over that window's keys, equal timm's softmax for both images of a batch (and a local block's the
    same way). Once "seen, not drawn" ("keys that are not image positions")."""
    _, cap, a = captured_and_kept("gcvit_xxtiny", seeded_input(2), f"{block}.attn.attn_drop", explicit=False)
    # a: (B · windows, heads, win², win²), windows image-major then row-major (timm's window_partition)
    rec = cap.records[f"{block}.attn"]
    nw = hw // win
    assert rec.kind == "window" and rec.hw == (hw, hw) and rec.heads == a.shape[1]
    assert ("global query" in rec.note) == block.endswith(("1", "3"))
    assert rec.layout().startswith("one window over the whole" if hw == win else f"window-local: {win}×{win} windows")
    for b in range(2):
        for y, xx in [(0, 0), (hw - 1, hw - 1), (hw // 3, hw - 2), (9, 4)]:
            w, i = b * nw * nw + (y // win) * nw + xx // win, (y % win) * win + xx % win
            for head in [None, 1]:
                r = a[w, :, i]
                ref = torch.zeros(hw, hw)
                y0, x0 = y // win * win, xx // win * win
                ref[y0:y0 + win, x0:x0 + win] = (r.mean(0) if head is None else r[head]).reshape(win, win)
                torch.testing.assert_close(rec.row(y, xx, batch=b, head=head), ref, atol=TOL, rtol=0)


def test_tnt_inner_attention_over_the_pixels_of_each_patch() -> None:
    """TNT's inner attention: 4×4 pixel tokens of each patch, cut by ``nn.Unfold`` (stride = kernel: a window partition)
    from a 56×56 pixel map. Each pixel's row lies in its own patch, at that patch's pixels (once "seen, not drawn")."""
    _, cap, a = captured_and_kept("tnt_s_legacy_patch16_224", seeded_input(1), "blocks.1.attn_in.attn_drop")
    # a: (patches, heads, 16, 16): patch n = py·14 + px in row-major order, pixel i = iy·4 + ix within it
    rec = cap.records["blocks.1.attn_in"]
    assert rec.kind == "window" and rec.hw == (56, 56)
    for y, xx in [(0, 0), (55, 55), (17, 42), (30, 3)]:
        (py, iy), (px, ix) = divmod(y, 4), divmod(xx, 4)
        for head in [None, 1]:
            r = a[py * 14 + px, :, iy * 4 + ix]
            ref = torch.zeros(56, 56)
            ref[py * 4:(py + 1) * 4, px * 4:(px + 1) * 4] = (r.mean(0) if head is None else r[head]).reshape(4, 4)
            torch.testing.assert_close(rec.row(y, xx, head=head), ref, atol=TOL, rtol=0)
    assert cap.records["blocks.1.attn_out"].kind == "tokens"


def test_talking_heads_rows_are_each_heads_softmax_before_the_mix() -> None:
    """CaiT's talking heads: a linear over the heads after the softmax. Each head's row is the softmax's own (the unit a
    reader checks against the paper's equations), the record says the heads are mixed after it; once "used by linear"."""
    _, cap, kept = captured_and_kept("cait_xxs24_224", seeded_input(1), "blocks.3.attn.proj_w", explicit=False)
    a = kept.permute(0, 3, 1, 2)  # (1, heads, 196, 196): the softmax, before proj_w
    rec = cap.records["blocks.3.attn"]
    assert rec.kind == "affinity" and rec.query_hw == (14, 14) and "talking heads" in rec.note
    for y, xx in [(0, 0), (13, 13), (6, 9)]:
        for head in [None, 2]:
            r = a[0, :, y * 14 + xx]
            torch.testing.assert_close(rec.row(y, xx, head=head), (r.mean(0) if head is None else r[head]).reshape(14, 14), atol=TOL, rtol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_class_attention_is_the_class_tokens_map_over_the_patches(fused: bool) -> None:
    """CaiT's class attention (the class token's one query over cls ⊕ patches, from ``x[:, 0]``): a spatial map over the
    14×14 patches, the heads' mean of the explicit weights, with the class token's own share named (once not traceable)."""
    _, cap, a = captured_and_kept("cait_xxs24_224", seeded_input(2), "blocks_token_only.1.attn.attn_drop", fused=fused)
    # a: (2, heads, 1, 1 + 196)
    rec = cap.records["blocks_token_only.1.attn"]
    assert rec.kind == "spatial" and rec.mask.shape == (2, 14, 14) and "class attention" in rec.note
    torch.testing.assert_close(rec.mask, a[:, :, 0, 1:].mean(1).reshape(2, 14, 14), atol=TOL, rtol=0)
    assert f"{float(a[:, :, 0, 0].mean(1).mean()):.1%}" in rec.note  # the weight on the class token, said, not renormalised away


def test_convit_gated_positional_attention_is_the_renormalised_mix() -> None:
    """ConViT's GPSA: (1 − σ(λ))·softmax(QKᵀ) + σ(λ)·softmax(positional scores), divided by its row sums. The record is
    that mix, the weights that multiply the values, row by row (once "never used as attention weights")."""
    _, cap, a = captured_and_kept("convit_tiny", seeded_input(1), "blocks.2.attn.attn_drop", explicit=False)
    rec = cap.records["blocks.2.attn"]  # a: (1, heads, 196, 196)
    assert rec.kind == "affinity" and rec.query_hw == rec.key_hw == (14, 14) and "gated mix" in rec.note
    for y, xx in [(0, 0), (13, 13), (4, 10)]:
        for head in [None, 3]:
            r = a[0, :, y * 14 + xx]
            torch.testing.assert_close(rec.row(y, xx, head=head), (r.mean(0) if head is None else r[head]).reshape(14, 14), atol=TOL, rtol=0)


def test_hiera_global_attention_over_unrolled_tokens() -> None:
    """Hiera's tokens are *unrolled* (the grid's inner digits outermost) and max-pooled at each stage; its global attention
    runs over them in that order. Rows are placed at their cells: the oracle maps tokens to cells with the model's own
    ``unroll`` applied to a coordinate map, pooled as the queries are (a max over the leading stride), independently of
    attnviz's provenance. Once "not traceable to image positions"."""
    x = seeded_input(1)
    model, cap = seeded_capture("hiera_tiny_224", x)
    softmaxes = unfused_softmaxes(model, x)
    a = softmaxes[6]  # blocks.6.attn: (1, heads, 196, 196), tokens in unrolled order
    ys, xs = torch.meshgrid(torch.arange(56.0), torch.arange(56.0), indexing="ij")
    coords = model.unroll(torch.stack([ys, xs], -1).reshape(1, 56 * 56, 2))  # each token's cell on the 56×56 grid
    for _ in range(2):  # two stage transitions, each a max over the leading 2×2 stride of the unrolled order
        coords = coords.view(1, 4, -1, 2).amax(1)
    cells = (coords[0] // 4).long()  # (196, 2) on the 14×14 grid of stage 3
    rec = cap.records["blocks.6.attn"]
    assert rec.query_hw == rec.key_hw == (14, 14)
    for n in [0, 17, 100, 195]:
        cy, cx = cells[n].tolist()
        for head in [None, 2]:
            r = a[0, :, n].mean(0) if head is None else a[0, head, n]
            ref = torch.zeros(14, 14)
            ref[cells[:, 0], cells[:, 1]] = r
            torch.testing.assert_close(rec.row(cy, cx, head=head), ref, atol=TOL, rtol=0)
    a = softmaxes[10]  # blocks.10.attn: queries pooled once more (7×7) over the 14×14 keys
    q_cells = (coords.view(1, 4, -1, 2).amax(1)[0] // 8).long()  # (49, 2)
    rec = cap.records["blocks.10.attn"]
    assert rec.query_hw == (7, 7) and rec.key_hw == (14, 14)
    for n in [0, 30, 48]:
        ref = torch.zeros(14, 14)
        ref[cells[:, 0], cells[:, 1]] = a[0, :, n].mean(0)
        torch.testing.assert_close(rec.row(*q_cells[n].tolist()), ref, atol=TOL, rtol=0)


def test_hiera_pooled_queries_over_their_mask_unit() -> None:
    """Hiera's first block of stages 2 and 3: mask-unit attention whose queries are max-pooled over the leading 2×2 stride of
    the unrolled order (one query per 2×2 key cells), over the keys of their unit. Token i of window w is token i·nW + w of
    the unrolled sequence; the oracle places it with the model's own ``unroll`` (as the global-attention test does). Both
    images of a batch. Once "seen, not drawn" ("keys and queries come from different windows")."""
    x = seeded_input(2)
    model, cap = seeded_capture("hiera_tiny_224", x)
    softmaxes = unfused_softmaxes(model, x)
    ys, xs = torch.meshgrid(torch.arange(56.0), torch.arange(56.0), indexing="ij")
    cells = model.unroll(torch.stack([ys, xs], -1).reshape(1, 56 * 56, 2))[0]  # (3136, 2): each token's cell on the 56×56 grid
    for block, grid in [(1, 56), (3, 28)]:
        a = softmaxes[block]  # (B, heads, windows, queries, keys)
        rec = cap.records[f"blocks.{block}.attn"]
        n_win = a.shape[2]
        q_cells = (cells.view(4, -1, 2).amax(0) // 2).long()  # pooled query j of window w: entry j·nW + w, on the grid / 2
        assert rec.query_hw == (grid // 2, grid // 2) and rec.key_hw == (grid, grid) and rec.layout().startswith("window-local")
        for b in range(2):
            for w, j in [(0, 0), (5, 3), (n_win - 1, a.shape[3] - 1), (n_win // 2, 1)]:
                keys = cells[torch.arange(a.shape[4]) * n_win + w].long()
                for head in [None, 1]:
                    ref = torch.zeros(grid, grid)
                    ref[keys[:, 0], keys[:, 1]] = a[b, :, w, j].mean(0) if head is None else a[b, head, w, j]
                    torch.testing.assert_close(rec.row(*q_cells[j * n_win + w].tolist(), batch=b, head=head), ref, atol=TOL, rtol=0)
        cells = cells.view(4, -1, 2).amax(0) // 2  # the next stage's tokens, on the grid / 2


def test_window_attention_is_clickable_in_the_app(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Swin's (shifted) windows and HaloNet's halo windows are click layers: a click gives the record's row of the cell
    under the pointer, every head or one; hover says to click instead (the rows are placed on the server)."""
    import numpy as np

    from attnviz.analysis.views.click import attention_at, click_raw
    from attnviz.ui.hover import payload

    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, depths=(2, 2, 2, 2), num_classes=3).eval()
    model.card = {"input_size": [224, 224], "class_names": ["a", "b", "c"]}
    _, a = analysed(model, tmp_path)
    rec = a.records["layers.1.blocks.1.attn"]
    for (x, y), head in [((110.0, 70.0), None), ((3.0, 220.0), 2)]:
        m, info = click_raw(a, x, y, "layers.1.blocks.1.attn", head=head)
        cy, cx = int(y * 28 / 224), int(x * 28 / 224)
        np.testing.assert_allclose(m, rec.row(cy, cx, head=head).numpy(), atol=TOL)
        assert info["feature_cell"] == [cy, cx] and abs(info["sum"] - 1) < 1e-4 and "outside_mass" not in info
    assert not payload(a, "layers.1.blocks.1.attn", "row")["id"]
    padded = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, depths=(2, 2), num_heads=(3, 6), img_size=256,
                               num_classes=3).eval()  # 64 cells over windows of 7: padded to 70
    padded.card = {"input_size": [256, 256], "class_names": ["a", "b", "c"]}
    _, b = analysed(padded, tmp_path)
    rec = b.records["layers.0.blocks.0.attn"]
    _, info, _ = attention_at(b, 255.0, 255.0, "layers.0.blocks.0.attn")  # the last cell: its window runs 6 cells past the map
    assert info["outside_mass"] == round(rec.outside_mass(63, 63), 4) > 0 and abs(info["sum"] + info["outside_mass"] - 1) < 1e-3
    assert "falls on the zero padding past the map" in info["text"]


def test_window_head_rows_are_every_heads_row() -> None:
    """``head_rows`` (one call per query, used by the atlas) equals ``row`` per head, and its mean the head-averaged row,
    on shifted and unshifted Swin windows."""
    from attnviz.capture.records import WindowAffinity

    torch.manual_seed(0)
    m = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, depths=(2, 2), embed_dim=32, num_heads=(2, 4)).eval()
    with torch.inference_mode(), attnviz.capture(m) as cap:
        m(torch.randn(1, 3, 224, 224))
    recs = [r for r in cap.records.values() if isinstance(r, WindowAffinity)]
    assert any(any(r.shift) for r in recs) and any(not any(r.shift) for r in recs)
    for r in recs[:2]:
        H, W = r.hw
        for y, x in ((0, 0), (H - 1, 3), (H // 2, W - 1)):
            rows = r.head_rows(y, x)
            assert rows.shape == (r.heads, H, W)
            for h in range(r.heads):
                assert torch.equal(rows[h], r.row(y, x, head=h))
            torch.testing.assert_close(r.row(y, x), rows.mean(0), rtol=0, atol=0)
            torch.testing.assert_close(rows.sum((1, 2)), torch.ones(r.heads), rtol=1e-5, atol=1e-5)  # each head's softmax row


def test_volo_outlook_attention_is_the_folded_linear_map_of_its_values() -> None:
    """VOLO's outlook attention, drawn: output cell p = Σ_k W_h[p, k] · v[k] per head, where W_h adds up the overlapping
    3×3 windows the module's fold sums. The oracle is autograd through timm's own forward: with the weights fixed (the
    module in eval), ∂ out[p, c] / ∂ v[k, c] for a channel c of head h is W_h[p, k]."""
    from attnviz.capture.records import HaloAffinity

    torch.manual_seed(0)
    attn = timm.models.volo.OutlookAttention(dim=32, num_heads=2, kernel_size=3, padding=1, stride=2).eval()
    attn.proj = nn.Identity()  # out = fold(A·V): channel c of the output reads channel c of v only
    x = torch.randn(1, 9, 10, 32)  # (B, H, W, C), odd and even sides
    v = attn.v(x).detach().requires_grad_(True)
    attn.v = _Fixed(v)
    with attnviz.capture(attn) as cap:
        out = attn(x)  # (1, H, W, C)
    (rec,) = cap.records.values()
    assert isinstance(rec, HaloAffinity) and rec.folded and rec.heads == 2 and rec.contribution is None
    for (py, px) in ((0, 0), (3, 4), (8, 9), (5, 1)):
        for head, c in ((0, 3), (1, 16 + 5)):
            (grad,) = torch.autograd.grad(out[0, py, px, c], v, retain_graph=True)
            torch.testing.assert_close(rec.row(py, px, head=head), grad[0, :, :, c], rtol=1e-5, atol=1e-6)
            assert torch.equal(rec.head_rows(py, px)[head], rec.row(py, px, head=head))  # the atlas's one call per cell
        n_windows = (1 + py % 2 * (0 < py < 8)) * (1 + px % 2 * (0 < px < 9))  # overlaps inside the map
        assert abs(float(rec.row(py, px).sum()) + rec.outside_mass(py, px) - n_windows) < 1e-4


class _Fixed(nn.Module):
    """A stand-in for a projection that returns a fixed tensor (the oracle differentiates with respect to it)."""

    def __init__(self, t: torch.Tensor) -> None:
        super().__init__()
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.t
