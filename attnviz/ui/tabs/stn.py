"""The STN tab: the sampling lattice and sampled region on the input, the rectified output, and θ."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from ...analysis import Analysis, stn
from ..common import Endpoint, Tab, ViewState, guard

HINT = "No spatial transformer in this model: try `stn_resnet`."


class StnTab(Tab):
    """One image (input with lattice | rectified output) and θ as text."""

    title, id = "STN", "stn"

    def build(self) -> None:
        self.note = gr.Markdown("", elem_classes=["note"])
        self.image = gr.Image(label="Input with sampling lattice and sampled region | rectified output", format="png", interactive=False)
        self.text = gr.Textbox(label="θ", lines=5)

    @property
    def outputs(self) -> list[Any]:
        return [self.image, self.text, self.note]

    def fill(self, a: Analysis, v: ViewState) -> dict[Any, Any]:
        img, text = stn.stn_view(a)
        return {self.image: img, self.text: text if img is not None else "", self.note: "" if img is not None else HINT}

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.stn, 2, lambda: [gr.Image(format="png"), gr.Textbox()], "stn")]

    @guard
    def stn(self, image: Any, model_name: str) -> tuple[np.ndarray | None, str]:
        """STN: warped lattice and sampled quadrilateral on the input, the rectified output beside it, and θ.

        Args:
            image: The image file.
            model_name: The model.
        """
        return stn.stn_view(self.shared.get(image, model_name))
