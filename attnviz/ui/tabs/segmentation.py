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
        return [self.view, self.legend, self.note, self.cam, self.cam_note]

    click_outputs = outputs

    def fill(self, a: Analysis, v: ViewState) -> dict[Any, Any]:
        if a.task != "segmentation":
            return {self.view: None, self.legend: "", self.note: HINT, self.cam: None, self.cam_note: ""}
        seg_img, leg = segmentation.segmentation_view(a, v.seg_alpha)
        out: dict[Any, Any] = {self.view: seg_img, self.legend: legend_html(leg), self.note: "", self.cam: None, self.cam_note: ""}
        if v.click is not None:
            cam, info = segmentation.segment_gradcam(self.shared.engine, a, v.click[0], v.click[1], v.style)
            out[self.cam] = cam
            out[self.cam_note] = (f"Grad-CAM of **{html.escape(info['class'])}** over its segment ({info['segment_area_share']:.1%} of the image), "
                                  f"layer `{info['layer']}`.")
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
