"""Render: pure functions, arrays in, RGB arrays / Figures out."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from attnviz import render


def test_overlay_shape_opacity_and_point() -> None:
    img = np.full((40, 60, 3), 100, np.uint8)
    m = np.zeros((4, 6))
    m[1, 2] = 1.0
    out = render.overlay(img, m, alpha=0.0)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, img)  # opacity 0 shows the image only
    full = render.overlay(img, m, alpha=1.0)
    assert full[15, 25].sum() > full[35, 55].sum()  # the hot cell is brighter than a cold corner
    marked = render.overlay(img, m, alpha=0.0, point=(30, 20))
    assert (marked != img).any() and (marked[0, 0] == img[0, 0]).all()


def test_shared_scale_keeps_brightness_meaningful() -> None:
    weak, strong = np.full((2, 2), 0.2), np.full((2, 2), 0.8)
    lo, hi = render.map_range([weak, strong])
    a, b = render.colorize(weak, "gray", lo, hi), render.colorize(strong, "gray", lo, hi)
    assert a.mean() < b.mean()
    # per-map scale makes a flat map the same colour whatever its value
    np.testing.assert_array_equal(render.colorize(weak, "gray"), render.colorize(strong, "gray"))


def test_bad_arguments_are_clear() -> None:
    with pytest.raises(ValueError, match="colormap"):
        render.colorize(np.zeros((2, 2)), "nope")
    with pytest.raises(ValueError, match="opacity"):
        render.overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2)), alpha=2)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        render.overlay(np.zeros((4, 4), np.uint8), np.zeros((2, 2)))


def test_quad_lattice_and_side_by_side() -> None:
    img = np.zeros((32, 32, 3), np.uint8)
    q = render.draw_quad(img, np.array([[4, 4], [28, 4], [28, 28], [4, 28]]))
    assert q[4, 16].any() and not q[16, 16].any()
    ys, xs = np.meshgrid(np.linspace(2, 30, 9), np.linspace(2, 30, 9), indexing="ij")
    lat = render.draw_lattice(img, np.stack([xs, ys], -1), every=4)
    assert lat.any()
    both = render.side_by_side([img, np.zeros((16, 16, 3), np.uint8)], gap=4)
    assert both.shape == (32, 32 + 4 + 32, 3)


def test_charts_are_figures() -> None:
    figs = [
        render.gate_heatmap(["a", "b"], [np.random.rand(8), np.random.rand(16)]),
        render.gate_bars("b", np.random.rand(16), other=np.random.rand(16)),
        render.branch_bars("sk", np.random.rand(2, 8)),
        render.affinity_matrix("cam", np.random.rand(8, 8)),
        render.logit_change(list("abcdefghij"), np.random.rand(10), np.random.rand(10)),
        render.series_heatmap(np.random.rand(8, 5), np.arange(5) / 5, "channel", "gates"),
        render.timeline(np.arange(5), {"p": np.random.rand(5)}, "p", "conf"),
    ]
    for f in figs:
        assert isinstance(f, Figure)
        rgb = render.figure_to_rgb(f)
        assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
    with pytest.raises(ValueError, match="differ in shape"):
        render.gate_bars("b", np.random.rand(16), other=np.random.rand(8))


def test_colour_bar_text_grows_with_wide_images() -> None:
    """A wide photo's overlay is shown shrunk: its colour bar (and tick text) is drawn larger in proportion."""
    from attnviz.render.overlay import READABLE_WIDTH

    narrow = render.with_colorbar(np.zeros((300, 384, 3), np.uint8), "inferno", 0.0, 1.0, "weight")
    wide = render.with_colorbar(np.zeros((480, 3 * READABLE_WIDTH, 3), np.uint8), "inferno", 0.0, 1.0, "weight")
    bar_narrow, bar_wide = narrow.shape[1] - 384, wide.shape[1] - 3 * READABLE_WIDTH
    assert bar_wide >= 2.9 * (bar_narrow - 4) and wide.shape[0] == 480
