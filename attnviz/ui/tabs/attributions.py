"""The Attributions tab: a captum attribution beside a native attention map, with agreement scores."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr
import numpy as np

from ...analysis import Analysis, UserError, attributions
from ..common import Endpoint, Tab, ViewState, guard, style_of

HINT = "Compare needs a spatial mask or a click layer; for segmentation models the click view already shows Grad-CAM of the clicked class."
METHODS = ["Grad-CAM", "IntegratedGradients", "Occlusion"]
READY_MS = 300  # models whose forward is this fast get the default comparison when the tab opens


RANDOM_TOP10_IOU = 0.1 * 0.1 / (0.1 + 0.1 - 0.1 * 0.1)  # expected IoU of the top 10 % of two independent random maps ≈ 0.053


def agreement_sentence(info: dict[str, Any]) -> str:
    """The agreement of the two maps in words (the numbers stay in the JSON fold)."""
    rho = info.get("spearman")
    iou = next((v for k, v in info.items() if k.endswith("%_iou")), None)
    if rho is None:
        rank = "Their rank correlation is undefined (one map is constant)"
    else:
        strength = "barely" if abs(rho) < 0.2 else "weakly" if abs(rho) < 0.5 else "moderately" if abs(rho) < 0.8 else "strongly"
        rank = f"Ranked position by position, they are **{strength} {'related' if rho >= 0 else 'opposed'}** (Spearman ρ = {rho:.2f})"
    text = f"**{html.escape(info['attribution'])}** for **{html.escape(str(info['target']))}** against the native map **{html.escape(info['native'])}**: {rank}"
    if iou is not None:
        text += (f"; their top-10 % regions overlap with IoU {iou:.2f} (two unrelated maps: about {RANDOM_TOP10_IOU:.2f}, identical: 1)")
    return text + ". An attribution says what the prediction depends on; a native map what the module weighted — they need not agree."


class AttributionsTab(Tab):
    """Method and native-map pickers, both maps side by side, and the agreement."""

    title, id = "Attributions", "compare"

    def build(self) -> None:
        self.note = gr.Markdown("", elem_classes=["note"])
        with gr.Row():
            self.method = gr.Radio(METHODS, value="Grad-CAM", label="Attribution (captum)")
            self.native = gr.Dropdown([], label="Native map", allow_custom_value=True)
            self.button = gr.Button("Compare")
        with gr.Row():
            self.native_img = gr.Image(label="Native attention", format="png", interactive=False)
            self.attr_img = gr.Image(label="Attribution", format="png", interactive=False)
        self.answer = gr.Markdown("", elem_id="compare_answer")
        with gr.Accordion("Raw numbers (JSON)", open=False):
            self.info = gr.JSON(label="Agreement")

    @property
    def outputs(self) -> list[Any]:
        return [self.native, self.note, self.native_img, self.attr_img, self.info, self.answer]

    def fill(self, a: Analysis, v: ViewState) -> dict[Any, Any]:
        natives = attributions.native_map_names(a) if a.task == "classification" else []
        out: dict[Any, Any] = {self.native: gr.update(choices=natives, value=natives[-1] if natives else None), self.note: "" if natives else HINT,
                               self.native_img: None, self.attr_img: None, self.info: None, self.answer: ""}
        if natives and a.forward_ms < READY_MS:  # cheap models: the default comparison is ready when the tab opens
            try:
                out[self.native_img], out[self.attr_img], out[self.info] = attributions.compare(self.shared.engine, a, "Grad-CAM", natives[-1], v.style)
                out[self.answer] = agreement_sentence(out[self.info])
            except UserError as e:
                out[self.note] = str(e)
        elif natives:
            out[self.note] = f"Press **Compare**: an attribution needs a backward pass (the forward took {a.forward_ms:.0f} ms)."
        return out

    def wire(self) -> None:
        s = self.shared

        def run(state: Any, method: str, native: str, cmap: str, alpha: float, scale: str) -> Any:
            nat, att, info = self.compare(*(state or [None, None]), method, native, cmap, alpha, scale)
            return nat, att, info, agreement_sentence(info)

        self.button.click(run, [s.input_state, self.method, self.native, s.cmap, s.alpha, s.scale],
                          [self.native_img, self.attr_img, self.info, self.answer], api_visibility="private")

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.compare, 7, lambda: [gr.Image(format="png"), gr.Image(format="png"), gr.JSON()], "compare")]

    @guard
    def compare(self, image: Any, model_name: str, method: str = "Grad-CAM", native: str | None = None, cmap: str = "inferno", alpha: float = 0.55,
                scale: str = "per map") -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """A captum attribution (Grad-CAM, IntegratedGradients, Occlusion) beside a native attention map, with Spearman and top-10% IoU.

        Args:
            image: The image file.
            model_name: A classification model.
            method: Grad-CAM, IntegratedGradients or Occlusion.
            native: A native map name (default: the deepest).
            cmap: Colormap.
            alpha: Overlay opacity.
            scale: 'per map' or 'shared'.
        """
        return attributions.compare(self.shared.engine, self.shared.get(image, model_name), method, native or None, style_of(cmap, alpha, scale))
