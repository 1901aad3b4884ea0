"""The Segmentation tab: the predicted segmentation with its legend, and Grad-CAM of the clicked pixel's segment."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr
import numpy as np

from ...analysis import Analysis, segmentation
from ..common import Endpoint, Tab, ViewState, guard, number, style_of

HINT = ("This model is a classifier: it predicts one label per image. The segmentation models (`fcn_seg`, `ccnet_seg`, `nonlocal_seg`, "
        "`danet_seg`, `gc_seg`, `ocr_seg`) predict a class per pixel.")


def legend_html(rows: list[dict[str, object]]) -> str:
    """The legend as a small HTML table: colour swatch, class, area share."""
    items = "".join(
        f"<tr><td><span style='display:inline-block;width:14px;height:14px;background:{r['colour']};border:1px solid #444'></span></td>"
        f"<td>{html.escape(str(r['name']))}</td><td style='text-align:right'>{float(r['area']):.1%}</td></tr>"  # type: ignore[arg-type]
        for r in rows)
    return f"<table class='legend'><tr><th></th><th>class</th><th>area</th></tr>{items}</table>"


def cam_sentence(info: dict[str, Any]) -> str:
    """What the segment's Grad-CAM shows, and how much of it lies on the segment (so the visitor can judge it)."""
    cls, area = html.escape(info["class"]), info["segment_area_share"]
    text = (f"Grad-CAM of **{cls}** over its predicted segment ({area:.1%} of the image), layer `{info['layer']}`: where the features "
            f"that raise the class's logit summed over the segment are. It is not a mask of the segment; mass elsewhere is context the model uses. ")
    if info.get("mass_on_segment") is None:
        return text + "The map is zero everywhere (no positive evidence at this layer)."
    return text + (f"**{info['mass_on_segment']:.0%} of the map's mass lies on the segment** ({info['mass_ratio']:.2f}× its area share; "
                   "1× = no preference).")


class SegmentationTab(Tab):
    """Segmentation overlay, legend and segment Grad-CAM; its opacity slider is a shared display control."""

    title, id = "Segmentation", "segmentation"

    def build(self) -> None:
        self.note = gr.Markdown("", elem_classes=["note"])
        self.alpha = gr.Slider(0, 1, value=0.5, step=0.05, label="Opacity of the segmentation")
        with gr.Row():
            self.view = gr.Image(label="Predicted segmentation", interactive=False, format="png", elem_id="seg_view")
            self.legend = gr.HTML("", elem_id="seg_legend")
        self.cam_note = gr.Markdown("")
        self.cam = gr.Image(label="Grad-CAM of the clicked pixel's class (captum)", interactive=False, format="png", elem_id="seg_cam")
        self.shared.add(seg_alpha=self.alpha)

    @property
    def outputs(self) -> list[Any]:
        return [self.view, self.legend, self.note, self.cam, self.cam_note, self.alpha]

    @property
    def click_outputs(self) -> list[Any]:
        return [self.view, self.legend, self.note, self.cam, self.cam_note]

    def fill(self, a: Analysis, v: ViewState) -> dict[Any, Any]:
        seg = a.task == "segmentation"
        hidden = gr.update(value=None, visible=False)
        if not seg:  # a classifier: the note only, no slider and no empty frames
            return {self.view: hidden, self.legend: gr.update(value="", visible=False), self.note: HINT, self.cam: hidden,
                    self.cam_note: gr.update(value="", visible=False), self.alpha: gr.update(visible=False)}
        seg_img, leg = segmentation.segmentation_view(a, v.seg_alpha)
        out: dict[Any, Any] = {self.view: gr.update(value=seg_img, visible=True), self.legend: gr.update(value=legend_html(leg), visible=True),
                               self.note: "", self.cam: hidden, self.cam_note: gr.update(value="", visible=False), self.alpha: gr.update(visible=True)}
        if v.click is not None:
            cam, info = segmentation.segment_gradcam(self.shared.engine, a, v.click[0], v.click[1], v.style)
            out[self.cam] = gr.update(value=cam, visible=True)
            out[self.cam_note] = gr.update(value=cam_sentence(info), visible=True)
        return out

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint(self.segmentation, 3, lambda: [gr.Image(format="png"), gr.JSON()], "segmentation"),
            Endpoint(self.segment_gradcam, 5, lambda: [gr.Image(format="png"), gr.JSON()], "segment_gradcam"),
        ]

    @guard
    def segmentation(self, image: Any, model_name: str, opacity: float = 0.5) -> tuple[np.ndarray, list[dict[str, object]]]:
        """The predicted segmentation over the image and the legend (classes present, their colour and area share).

        Args:
            image: The image file.
            model_name: A segmentation model.
            opacity: Overlay opacity in [0, 1].
        """
        return segmentation.segmentation_view(self.shared.get(image, model_name), number("opacity", opacity, 0, 1))

    @guard
    def segment_gradcam(self, image: Any, x: float, y: float, model_name: str, cmap: str = "inferno") -> tuple[np.ndarray, dict[str, Any]]:
        """captum Grad-CAM of the clicked pixel's class, summed over that class's predicted segment (segmentation models).

        Args:
            image: The image file.
            x: Column of the pixel (image pixels).
            y: Row of the pixel (image pixels).
            model_name: A segmentation model.
            cmap: Colormap.
        """
        return segmentation.segment_gradcam(self.shared.engine, self.shared.get(image, model_name), x, y, style_of(cmap, 0.55, "per map"))
