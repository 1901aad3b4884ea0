"""The Pixel attention tab: click (or hover) a pixel to see where a Non-Local / CCNet / DANet / BotNet / OCR layer looks."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr
import numpy as np

from ...analysis import Analysis, click
from ...maps import click_layers
from .. import hover
from ..common import Endpoint, Tab, ViewState, guard, head_of, style_of

HINT = "Click needs a Non-Local, CCNet, DANet, BotNet or OCR layer. Try `ccnet_resnet`, `nonlocal_resnet` or a `*_seg` model."


class PixelTab(Tab):
    """Layer / view / head pickers, the clicked map with its answer, hover, query dependence and the grid of every head."""

    title, id = "Pixel attention", "click"

    def build(self) -> None:
        self.note = gr.Markdown("", elem_classes=["note"])
        with gr.Row():
            self.layer = gr.Dropdown([], label="Layer", elem_id="layer", allow_custom_value=True)
            self.view = gr.Dropdown([], label="View", elem_id="view", allow_custom_value=True)
            self.head = gr.Dropdown(["mean"], value="mean", label="Head", visible=False, allow_custom_value=True)
        self.image = gr.Image(label="Original | attention of the clicked pixel · crosshair = clicked pixel, diamond = peak (click either image)",
                              interactive=False, format="png",
                              type="numpy", elem_id="view_image", buttons=["download", "fullscreen"])
        self.answer = gr.Markdown("", elem_id="answer")
        with gr.Accordion("Hover to explore (maps drawn in the browser)", open=False):
            self.hover = hover.component()
        self.qd = gr.Markdown("", elem_id="query_dependence")
        with gr.Accordion("Every layer and head for this click", open=False):
            self.grid = gr.Gallery(label="Same click, every layer / view / head", columns=3, height="auto", format="png", elem_id="click_grid")
        with gr.Accordion("Raw numbers (JSON)", open=False):
            self.details = gr.JSON(label="Click", elem_id="click_info")
        self.shared.add(layer_dd=self.layer, view_dd=self.view, head_dd=self.head, view_img=self.image)

    @property
    def outputs(self) -> list[Any]:
        return [self.layer, self.view, self.head, self.note, self.image, self.answer, self.details, self.grid, self.qd, self.hover]

    click_outputs = outputs

    def fill(self, a: Analysis, v: ViewState) -> dict[Any, Any]:
        layers = click_layers(a.records)
        names = list(layers)
        cur_layer = v.layer if v.layer in layers else (names[-1] if names else None)
        cl = layers.get(cur_layer) if cur_layer else None
        views = list(cl.views) if cl else []
        cur_view = v.view if v.view in views else (cl.default_view if cl else None)
        heads = ["mean"] + ([str(i) for i in range(cl.heads)] if cl and cl.heads > 1 else [])
        out: dict[Any, Any] = {
            self.layer: gr.update(choices=names, value=cur_layer, visible=bool(names)),
            self.view: gr.update(choices=views, value=cur_view, visible=bool(names)),
            self.head: gr.update(choices=heads, value=v.head if str(v.head) in heads else "mean", visible=len(heads) > 1),
            self.note: "" if names else HINT,
        }
        if not names or v.click is None:
            out.update({self.image: a.display_image(), self.answer: "", self.details: {}, self.grid: [], self.qd: "",
                        self.hover: hover.empty("This model has no click layer.")})
            return out
        x, y = v.click
        img, info, _ = click.attention_at(a, x, y, cur_layer, cur_view, head_of(v.head) if str(v.head) in heads else None, v.style)
        qd = click.query_dependence(a, cur_layer)
        out.update({self.image: img, self.answer: info["text"], self.details: info, self.grid: click.click_grid(a, x, y, v.style),
                    self.qd: (f"**Query dependence of {html.escape(qd['layer'])}** ({qd['view']}): mean JS {qd['mean_js']:.3f}, "
                              f"same peak in {qd['same_peak_share']:.0%} of {qd['pairs']} random query pairs — {qd['verdict']}.  \n"
                              f"_{qd['explanation']}._"),
                    self.hover: hover.payload(a, cur_layer, cur_view, v.style.cmap)})
        return out

    def click_xy(self, evt: gr.SelectData, state: Any) -> tuple[float, float] | None:
        """The image pixel of a click on the view (original | overlay | colour bar: either image picks the same pixel)."""
        if not state or not state[0]:
            return None
        a = self.shared.get(state[0], state[1])
        x, y = evt.index
        k = a.display_scale
        w = a.hw[1] * k
        gap = 6
        if x >= w + gap:
            x = x - w - gap
        x, y = min(max(0.0, x / k), a.hw[1] - 1e-3), min(max(0.0, y / k), a.hw[0] - 1e-3)
        return float(x), float(y)

    # ------------------------------------------------------------------ endpoints
    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint(self.attention_at, 11, lambda: [gr.Image(format="png"), gr.JSON()], "attention_at"),
            Endpoint(self.click_grid, 5, lambda: [gr.Gallery(format="png")], "click_grid"),
            Endpoint(self.query_dependence, 3, lambda: [gr.JSON()], "query_dependence"),
        ]

    @guard
    def attention_at(self, image: Any, x: float, y: float, layer: str | None = None, view: str | None = None, head: Any = "mean",
                     model_name: str | None = None, cmap: str = "inferno", alpha: float = 0.55, scale: str = "per map",
                     threshold: float = 0.0) -> tuple[np.ndarray, dict[str, Any]]:
        """Where one pixel looks: the attention map of the pixel (x, y) in a Non-Local / CCNet / DANet / BotNet / OCR layer.

        Args:
            image: The image file.
            x: Column of the pixel, in the image's own pixels (0 = left).
            y: Row of the pixel, in the image's own pixels (0 = top).
            layer: A click layer (default: the deepest); see analyze's ``click_layers``.
            view: row / loop1 / loop2 / reach (CCNet two-hop) / regions (OCR); default reach for CCNet, else row.
            head: 'mean' or a head index.
            model_name: The model (default: the app's default model).
            cmap: Colormap.
            alpha: Overlay opacity in [0, 1].
            scale: 'per map' or 'shared'.
            threshold: Hide weights below this fraction of the maximum (0 = show all).

        Returns:
            An image (original | overlay with the pixel and the peak marked, colour bar attached) and the
            facts: feature cell, peak, value range, concentration, a readable ``text``, and for
            segmentation the pixel's class, top-3 probabilities and same-class mass ratio.
        """
        a = self.shared.get(image, model_name)
        rgb, info, _ = click.attention_at(a, x, y, layer or None, view or None, head_of(head), style_of(cmap, alpha, scale, threshold))
        return rgb, info

    @guard
    def click_grid(self, image: Any, x: float, y: float, model_name: str | None = None, cmap: str = "inferno") -> list[tuple[np.ndarray, str]]:
        """The same click in every attention layer, view and head (one tile each, each with its own colour scale).

        Args:
            image: The image file.
            x: Column of the pixel (image pixels).
            y: Row of the pixel (image pixels).
            model_name: The model.
            cmap: Colormap.
        """
        return click.click_grid(self.shared.get(image, model_name), x, y, style_of(cmap, 0.55, "per map"))

    @guard
    def query_dependence(self, image: Any, model_name: str, layer: str | None = None) -> dict[str, Any]:
        """Does a layer's attention depend on the query pixel? (GCNet's question.) Mean JS divergence and same-peak share of random query pairs.

        Args:
            image: The image file.
            model_name: The model.
            layer: A click layer (default: the deepest).
        """
        return click.query_dependence(self.shared.get(image, model_name), layer or None)
