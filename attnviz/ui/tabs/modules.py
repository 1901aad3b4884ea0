"""The Modules tab: every captured layer (and what was seen, not drawn), and ablation of one layer."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from ...analysis import Analysis, UserError, modules
from ..common import Endpoint, Tab, ViewState, guard

COLUMNS = ["layer", "kind", "module", "source", "shape", "contribution", "note"]


def ablation_sentence(info: dict[str, Any]) -> str:
    """What bypassing the layer did, in words."""
    head = f"Bypassing **{html.escape(info['layer'])}** ({html.escape(info['change'])})"
    if "pixels_changing_class" in info:
        return (f"{head} changes the predicted class of **{info['pixels_changing_class']:.1%} of the pixels** "
                f"(largest logit change {info['max_abs_logit_change']:.3g}).")
    after = info["prediction_after"]
    verdict = "the prediction stays" if after == info["top_class"] else f"the prediction becomes **{html.escape(after)}**"
    return (f"{head} moves the probability of **{html.escape(info['top_class'])}** from {info['top_prob_before']:.1%} to {info['top_prob_after']:.1%}; "
            f"{verdict} (largest logit change {info['max_abs_logit_change']:.3g}).")


class ModulesTab(Tab):
    """The table of captured layers and an Ablate button."""

    title, id = "Modules", "modules"

    def build(self) -> None:
        self.table = gr.Dataframe(headers=COLUMNS, label="Captured layers", wrap=True)
        with gr.Row():
            self.layer = gr.Dropdown([], label="Layer to bypass (gate = 1 / γ = 0)", allow_custom_value=True)
            self.button = gr.Button("Ablate")
        self.answer = gr.Markdown("Choose a layer and press **Ablate**: the model runs again with that layer bypassed (gate = 1, γ = 0), "
                                  "and the change in its output is shown here.", elem_id="ablate_answer")
        self.plot = gr.Plot(label="Logits before / after")
        with gr.Accordion("Raw numbers (JSON)", open=False):
            self.info = gr.JSON(label="Change")

    @property
    def outputs(self) -> list[Any]:
        return [self.table, self.layer]

    def fill(self, a: Analysis, v: ViewState) -> dict[Any, Any]:
        names = list(a.records)
        return {self.table: modules.modules_table(a), self.layer: gr.update(choices=names, value=names[-1] if names else None)}

    def wire(self) -> None:
        def run(state: Any, layer: str) -> tuple[Any, Any, str]:
            fig, info = self.ablation(*(state or [None, None]), layer)
            return fig, info, ablation_sentence(info)

        self.button.click(run, [self.shared.input_state, self.layer], [self.plot, self.info, self.answer], api_visibility="private")

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint(self.modules, 2, lambda: [gr.Dataframe()], "modules"),
            Endpoint(self.ablation, 3, lambda: [gr.Plot(), gr.JSON()], "ablate"),
        ]

    @guard
    def modules(self, image: Any, model_name: str) -> list[list[Any]]:
        """Every captured layer: kind, module, source, shape, contribution ‖out−x‖/‖x‖ and a note.

        Args:
            image: The image file.
            model_name: The model.
        """
        return modules.modules_table(self.shared.get(image, model_name))

    @guard
    def ablation(self, image: Any, model_name: str, layer: str) -> tuple[Any, dict[str, Any]]:
        """Bypass one layer (gate = 1 / γ = 0) and show how the output changes.

        Args:
            image: The image file.
            model_name: The model.
            layer: A captured layer name.
        """
        if not layer:
            raise UserError("layer is missing: choose a layer to ablate.")
        return modules.ablate(self.shared.engine, self.shared.get(image, model_name), layer)
