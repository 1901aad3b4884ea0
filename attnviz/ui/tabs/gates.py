"""The Channel gates tab (SE / ECA / CBAM / GC gates) and the SK / DANet tab (branch weights, channel affinity)."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from ... import render
from ...analysis import Analysis, gates
from ..common import Endpoint, Tab, ViewState, guard

HINT = "No channel gates in this model. SE, ECA and CBAM blocks have them: try `se_resnet`, `eca_resnet` or `cbam_resnet`."
OTHERS_HINT = "No SK branch weights or DANet channel affinity in this model: try `sk_resnet`, `danet_resnet`, `danet_seg` or `skresnet18` (ImageNet)."


class GatesTab(Tab):
    """Blocks × channels heatmap, one block's bars, and a second image to compare them with."""

    title, id = "Channel gates", "gates"

    def build(self) -> None:
        self.note = gr.Markdown("", elem_classes=["note"])
        self.heat = gr.Plot(label="Gates: blocks × channels")
        with gr.Row():
            self.block = gr.Dropdown([], label="Block", allow_custom_value=True)
            self.sort = gr.Checkbox(True, label="Sort channels by gate")
            self.image2 = gr.File(label="Second image to compare (optional)", file_types=["image"], type="filepath", height=90)
        self.bars = gr.Plot(label="Gates of one block")

    @property
    def outputs(self) -> list[Any]:
        return [self.heat, self.block, self.bars, self.note]

    def fill(self, a: Analysis, v: ViewState) -> dict[Any, Any]:
        names = [g.name for g in gates.gate_records(a)]
        return {self.heat: gates.gates_heatmap(a), self.block: gr.update(choices=names, value=names[-1] if names else None),
                self.bars: gates.gate_bars(a, None) if names else None, self.note: "" if names else HINT}

    def wire(self) -> None:
        def redraw(state: Any, block: str, sort: bool, image2: Any) -> tuple[Any, Any]:
            return self.channel_gates(*(state or [None, None]), block, sort, image2)

        gr.on([self.block.input, self.sort.change, self.image2.upload], redraw, [self.shared.input_state, self.block, self.sort, self.image2],
              [self.heat, self.bars], api_visibility="private")

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.channel_gates, 5, lambda: [gr.Plot(), gr.Plot()], "channel_gates")]

    @guard
    def channel_gates(self, image: Any, model_name: str, block: str | None = None, sort: bool = True, image2: Any = None) -> tuple[Any, Any]:
        """Blocks × channels gate heatmap, and one block's gate bars (beside a second image's, if given).

        Args:
            image: The image file.
            model_name: The model.
            block: A gated block (default: the deepest).
            sort: Sort channels by gate.
            image2: An optional second image to compare gates with.
        """
        a = self.shared.get(image, model_name)
        other = self.shared.get(image2, model_name) if image2 not in (None, "") else None
        return gates.gates_heatmap(a), gates.gate_bars(a, block or None, bool(sort), other)


class OthersTab(Tab):
    """SK branch weights and DANet channel affinity, as images."""

    title, id = "SK / DANet", "others"

    def build(self) -> None:
        self.note = gr.Markdown("", elem_classes=["note"])
        self.gallery = gr.Gallery(label="SK branch weights and DANet channel affinity", columns=2, format="png", height="auto")

    @property
    def outputs(self) -> list[Any]:
        return [self.gallery, self.note]

    @staticmethod
    def figures(a: Analysis) -> list[tuple[np.ndarray, str]]:
        figs = gates.branch_figures(a) + gates.channel_affinity_figures(a)
        return [(render.figure_to_rgb(f), f.axes[0].get_title() or "") for f in figs]

    def fill(self, a: Analysis, v: ViewState) -> dict[Any, Any]:
        figs = self.figures(a)
        return {self.gallery: figs, self.note: "" if figs else OTHERS_HINT}

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.other_maps, 2, lambda: [gr.Gallery(format="png")], "other_maps")]

    @guard
    def other_maps(self, image: Any, model_name: str) -> list[tuple[np.ndarray, str]]:
        """SK branch weights and DANet channel affinity, as images.

        Args:
            image: The image file.
            model_name: The model.
        """
        return self.figures(self.shared.get(image, model_name))
