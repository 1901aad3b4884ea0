"""The Transformer tab: every layer and head for the clicked patch or the class token, rollout, and mean attention distance."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from ... import render
from ...analysis import Analysis, UserError, transformer
from ...analysis.text import share_text
from ..common import Endpoint, Tab, ViewState, guard, style_of

HINT = ("No transformer self-attention in this model. Vision transformers (timm `vit_*`, `deit_*`, DINOv2, Swin; torchvision `vit_b_16`; "
        "HF `transformers` ViT / DINOv2 / SegFormer) brought with `attnviz serve --model …` show every head here.")
QUERY_CHOICES = [("clicked patch", "patch"), ("class token", "cls")]
KIND_WORDS = {"window": "windowed", "affinity": "global", "tokens": "over tokens"}


class TransformerTab(Tab):
    """Head grid (layers × heads), rollout over the image, and the heads × layers distance plot."""

    title, id = "Transformer", "transformer"

    def build(self) -> None:
        self.note = gr.Markdown("", elem_classes=["note"])
        with gr.Row():
            self.query = gr.Radio(QUERY_CHOICES, value="patch", label="Query", elem_id="tf_query")
            self.stage = gr.Dropdown(choices=[], type="index", label="Stage of the grid (hierarchical models: each stage has its own grid)",
                                     visible=False, elem_id="tf_stage")
        self.grid = gr.Image(label="Every layer (rows) and head (columns), each with its own scale: click a thumbnail to open it", format="png",
                             interactive=False, elem_id="head_grid")
        self.opened = gr.Image(label="The thumbnail, opened", format="png", interactive=False, visible=False, elem_id="head_opened")
        self.opened_note = gr.Markdown("", elem_id="head_opened_note")
        with gr.Row():
            self.rollout = gr.Image(label="Attention rollout through every layer", format="png", interactive=False, elem_id="rollout")
            self.distance = gr.Plot(label="Mean attention distance", show_label=False, elem_id="distance_plot")  # the figure has its title
        self.answer = gr.Markdown("", elem_id="tf_answer")
        with gr.Row():
            self.grad_btn = gr.Button("Gradient rollout of the predicted class (one backward pass)", elem_id="grad_rollout_btn")
        self.grad_img = gr.Image(label="Gradient-weighted rollout (Chefer et al. 2021)", format="png", interactive=False, visible=False,
                                 elem_id="grad_rollout")  # shown once computed: an empty panel until then reads as a failure
        self.grad_note = gr.Markdown("", elem_id="grad_note")

    @property
    def outputs(self) -> list[Any]:
        return [self.note, self.grid, self.rollout, self.distance, self.answer, self.query, self.grad_img, self.grad_note, self.opened, self.opened_note,
                self.grad_btn, self.stage]

    @property
    def click_outputs(self) -> list[Any]:  # a new click closes the opened thumbnail and shows the first stage
        return [self.grid, self.rollout, self.answer, self.opened, self.opened_note, self.stage]

    @staticmethod
    def _stages(a: Analysis, query: str, names: list[str] | None = None) -> Any:
        names = transformer.head_stages(a, query) if names is None else names
        return gr.update(choices=names, value=names[0] if names else None, visible=len(names) > 1)

    def fill(self, a: Analysis, v: ViewState, query: str = "patch") -> dict[Any, Any]:
        layers = transformer.token_layers(a)
        hidden = gr.update(value=None, visible=False)
        if not layers:
            heads = transformer.head_layers(a)
            x, y = v.click if v.click is not None else (None, None)
            grid = gr.update(value=render.figure_to_rgb(transformer.head_grid(a, x, y, "patch", v.style.cmap)), visible=True) if heads else hidden
            kinds = ", ".join(sorted({KIND_WORDS.get(cl.kind, cl.kind) for cl in heads}))
            counts = " or ".join(str(n) for n in sorted({cl.heads for cl in heads}))
            plotted = {r.name for r in transformer.distance_layers(a)}
            left = [cl.name for cl in heads if cl.name not in plotted]
            stage_names = transformer.head_stages(a) if heads else []
            stages = "one stage's layers (Stage picks which)" if len(stage_names) > 1 else "the layers"
            answer = (f"{len(heads)} multi-head self-attention layers ({kinds}) with {counts} heads; the grid shows every head of "
                      f"{stages} for the clicked pixel. Class-token view, rollout and gradient rollout need attention over "
                      "a token sequence with a class token." + (f" The distance plot leaves out {len(left)} layer(s) whose mean over every "
                      "query is not formed here." if plotted and left else "")) if heads else ""
            distance = gr.update(value=transformer.distance_figure(a), visible=True) if plotted else hidden
            return {self.note: "" if heads else HINT, self.grid: grid, self.rollout: hidden, self.distance: distance, self.answer: answer,
                    self.query: gr.update(visible=False, value="patch"), self.grad_img: hidden, self.grad_note: "", self.opened: hidden,
                    self.opened_note: "", self.grad_btn: gr.update(visible=False),
                    self.stage: self._stages(a, "patch", stage_names)}
        has_cls = bool(layers[0].query_prefix)
        query = query if has_cls else "patch"
        x, y = v.click if v.click is not None else (None, None)
        grid = render.figure_to_rgb(transformer.head_grid(a, x, y, query, v.style.cmap))
        roll, info = transformer.rollout_view(a, x, y, "cls" if has_cls else "patch", v.style)
        prefix = ", ".join(layers[0].key_prefix) or "none"
        answer = (f"{len(layers)} self-attention layers with {layers[0].heads} heads over a {layers[0].query_hw[0]}×{layers[0].query_hw[1]} "
                  f"patch grid; prefix tokens: {prefix}. Rollout of the {'class token' if has_cls else 'clicked patch'} through "
                  f"{info['layers']} layers: {share_text(info['prefix_share'])} of it stays on the prefix tokens, the rest is drawn.")
        return {self.note: "", self.grid: gr.update(value=grid, visible=True), self.rollout: gr.update(value=roll, visible=True),
                self.distance: gr.update(value=transformer.distance_figure(a), visible=True), self.answer: answer,
                self.query: gr.update(visible=has_cls, value=query), self.grad_img: gr.update(value=None, visible=False), self.grad_note: "",
                self.opened: gr.update(value=None, visible=False), self.opened_note: "",
                self.grad_btn: gr.update(visible=a.task != "features"),  # a backbone has no class to explain
                self.stage: self._stages(a, query)}

    def wire(self) -> None:
        s = self.shared

        @guard
        def redraw(state: Any, xy: Any, query: str, cmap: str, stage: Any = 0) -> Any:
            a = self.shared.current(state)
            x, y = (xy or [None, None])[:2]
            return render.figure_to_rgb(transformer.head_grid(a, x, y, query, cmap, stage or 0))

        @guard
        def requery(state: Any, xy: Any, query: str, cmap: str) -> tuple[Any, Any]:
            return redraw(state, xy, query, cmap), self._stages(self.shared.current(state), query)

        self.query.change(requery, [s.input_state, s.xy_state, self.query, s.cmap], [self.grid, self.stage], api_visibility="private")
        self.stage.input(redraw, [s.input_state, s.xy_state, self.query, s.cmap, self.stage], [self.grid], api_visibility="private")

        @guard
        def open_cell(state: Any, xy: Any, query: str, cmap: str, alpha: float, stage: Any, evt: gr.SelectData) -> tuple[Any, str]:
            a = self.shared.current(state)
            x, y = (xy or [None, None])[:2]
            px, py = (evt.index or [0, 0])[:2]
            layer, head = transformer.head_at(a, float(px), float(py), x, y, query, cmap, stage or 0)
            img, info = transformer.head_view(a, layer, head, x, y, query, style_of(cmap, alpha, "per map"), stage or 0)
            return gr.update(value=img, visible=True), info["text"]

        self.grid.select(open_cell, [s.input_state, s.xy_state, self.query, s.cmap, s.alpha, self.stage], [self.opened, self.opened_note],
                         api_visibility="private")

        @guard
        def grad(state: Any, cmap: str) -> tuple[Any, str]:
            a = self.shared.current(state)
            img, info = transformer.gradient_rollout_view(s.engine, a, None, style_of(cmap, 0.55, "per map"))
            note = f"Gradient-weighted rollout of **{info['class']}** through {info['layers']} layers: {info['method']}."
            return gr.update(value=img, visible=True), note

        self.grad_btn.click(grad, [s.input_state, s.cmap], [self.grad_img, self.grad_note], api_visibility="private")

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.head_grid, 6, lambda: [gr.Image(format="png")], "head_grid"),
                Endpoint(self.head_view, 8, lambda: [gr.Image(format="png"), gr.JSON()], "head_view")]

    @guard
    def head_view(self, image: Any, model_name: str, layer: Any, head: Any, x: float | None = None, y: float | None = None,
                  query: str = "patch", cmap: str = "inferno") -> tuple[np.ndarray, dict[str, Any]]:
        """One thumbnail of the head grid, opened: a layer and head's attention for the clicked patch (or the class token), over the image.

        Args:
            image: The image file.
            model_name: A transformer model.
            layer: Row of the head grid (0 = the first self-attention layer).
            head: Column of the head grid (head index).
            x: Column of the clicked pixel (image pixels); default the centre.
            y: Row of the clicked pixel (image pixels); default the centre.
            query: 'patch' (the patch under the pixel) or 'cls' (the class token).
            cmap: Colormap.
        """
        style = style_of(cmap, 0.55, "per map")
        a = self.shared.get(image, model_name)
        try:
            li, hi = int(layer), int(head)
        except (TypeError, ValueError):
            raise UserError(f"layer and head must be whole numbers; got layer {layer!r}, head {head!r}.") from None
        return transformer.head_view(a, li, hi, x, y, query, style)

    @guard
    def head_grid(self, image: Any, model_name: str, x: float | None = None, y: float | None = None, query: str = "patch",
                  cmap: str = "inferno") -> np.ndarray:
        """Every layer and head of a vision transformer at once: the attention of the clicked patch (or the class token) over the patches.

        Args:
            image: The image file.
            model_name: A transformer model.
            x: Column of the clicked pixel (image pixels); default the centre.
            y: Row of the clicked pixel (image pixels); default the centre.
            query: 'patch' (the patch under the pixel) or 'cls' (the class token).
            cmap: Colormap.
        """
        style_of(cmap, 0.55, "per map")
        a = self.shared.get(image, model_name)
        if query not in ("patch", "cls"):
            raise UserError(f"query must be 'patch' or 'cls'; got {query!r}.")
        return render.figure_to_rgb(transformer.head_grid(a, x, y, query, cmap))
