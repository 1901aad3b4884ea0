"""The Export tab: one zip of what the page shows (PNG overlays, raw maps, segmentation, metadata)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ...analysis import Analysis, export_bundle
from ..common import Endpoint, Tab, ViewState, guard, style_of

ABOUT = ("One zip: PNG overlays, `maps.npz` with every raw map at feature resolution (and the segmentation: `segmentation.png` with class ids, "
         "logits), and `metadata.json` (model, layers, kinds, image size, click).")


class ExportTab(Tab):
    """An Export button and the file to download."""

    title, id = "Export", "export"

    def build(self) -> None:
        gr.Markdown(ABOUT)
        self.button = gr.Button("Export")
        self.file = gr.File(label="Download")

    @property
    def outputs(self) -> list[Any]:
        return [self.file]

    def fill(self, a: Analysis, v: ViewState) -> dict[Any, Any]:
        return {self.file: None}  # a new analysis: the previous zip is not this one's

    def wire(self) -> None:
        s = self.shared

        def run(state: Any, xy: Any, layer: str, cmap: str, alpha: float, scale: str) -> str:
            x, y = (xy or [None, None])[:2]
            return self.export(*(state or [None, None]), x, y, layer, cmap, alpha, scale)

        self.button.click(run, [s.input_state, s.xy_state, s.layer_dd, s.cmap, s.alpha, s.scale], [self.file], api_visibility="private")

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.export, 8, lambda: [gr.File()], "export")]

    @guard
    def export(self, image: Any, model_name: str, x: float | None = None, y: float | None = None, layer: str | None = None, cmap: str = "inferno",
               alpha: float = 0.55, scale: str = "per map") -> str:
        """A zip: PNG overlays, NPZ of every raw map at feature resolution, the segmentation (label PNG + logits) and JSON metadata.

        Args:
            image: The image file.
            model_name: The model.
            x: Optional clicked column (image pixels).
            y: Optional clicked row (image pixels).
            layer: Click layer for the clicked map.
            cmap: Colormap.
            alpha: Overlay opacity.
            scale: 'per map' or 'shared'.
        """
        a = self.shared.get(image, model_name)
        click = (x, y) if x not in (None, "") and y not in (None, "") else None
        return str(export_bundle(a, click, layer or None, style_of(cmap, alpha, scale)))
