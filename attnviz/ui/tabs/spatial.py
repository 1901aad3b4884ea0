"""The Spatial masks tab: every spatial mask (CBAM, scSE, GC, generic) over the image."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from ...analysis import Analysis, spatial
from ..common import Endpoint, Tab, ViewState, guard, style_of

HINT = "No spatial masks in this model. CBAM, scSE and GC blocks have them: try `cbam_resnet`, `scse_resnet`, `gc_resnet` or `gc_seg`."


class SpatialTab(Tab):
    """A gallery of masks; redrawn with the display controls."""

    title, id = "Spatial masks", "spatial"

    def build(self) -> None:
        self.note = gr.Markdown("", elem_classes=["note"])
        self.gallery = gr.Gallery(label="Spatial masks by block (CBAM / scSE / GC)", columns=3, format="png", height="auto")

    @property
    def outputs(self) -> list[Any]:
        return [self.gallery, self.note]

    @property
    def click_outputs(self) -> list[Any]:
        return [self.gallery]

    def fill(self, a: Analysis, v: ViewState) -> dict[Any, Any]:
        masks = spatial.spatial_gallery(a, v.style)
        return {self.gallery: masks, self.note: "" if masks else HINT}

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.spatial_masks, 5, lambda: [gr.Gallery(format="png")], "spatial_masks")]

    @guard
    def spatial_masks(self, image: Any, model_name: str, cmap: str = "inferno", alpha: float = 0.55, scale: str = "per map") -> list[tuple[np.ndarray, str]]:
        """Every spatial mask (CBAM, scSE, GC, generic) over the image, each with a colour bar.

        Args:
            image: The image file.
            model_name: The model.
            cmap: Colormap.
            alpha: Overlay opacity.
            scale: 'per map' or 'shared'.
        """
        return spatial.spatial_gallery(self.shared.get(image, model_name), style_of(cmap, alpha, scale))
