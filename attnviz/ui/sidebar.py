"""The left column: upload, model, status line, prediction, example buttons and the display controls."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from .. import render
from ..analysis import Analysis, UserError, modules
from .common import Endpoint, Shared, ViewState, guard
from .examples import Example

GROUPS = ("Zoo scenes (classification)", "Zoo scenes (segmentation)", "Photos", "Street and indoor scenes")
PUBLISHED = ("ImageNet", "Cityscapes", "ADE20K")  # what models trained on these can be shown without a warning


def headline(a: Analysis, click: tuple[float, float] | None) -> str:
    """What matters, in one heading: the predicted class (classification) or the classes found and the clicked pixel's
    class (segmentation), with a caution when the model was trained on images unlike this one."""
    if a.task == "classification":
        (name, p), = a.top(1).items()
        text = f"### {html.escape(name)} · {p:.0%}"
    elif a.task == "features":
        text = f"### A backbone: {a.logits.numel()} features, no classes  \nIts attention is all there is to see here."
    else:
        found = [str(r["name"]) for r in a.legend() if str(r["name"]).lower() != "background"]
        text = "### Found: " + (html.escape(", ".join(found[:4])) + (f" and {len(found) - 4} more" if len(found) > 4 else "") if found else "background only")
        if click is not None:
            (cls, p), *_ = a.probs_at(click[0], click[1], k=1)
            text += f"  \nClicked pixel ({click[0]:.0f}, {click[1]:.0f}): **{html.escape(cls)}** · {p:.0%}"
    if a.trained_on and not a.trained_on.startswith(PUBLISHED[0]) and not any(p in a.trained_on for p in PUBLISHED[1:]) and is_photo(a):
        text += (f"  \n**Caution:** {html.escape(a.model_name)} was trained on {html.escape(a.trained_on)}; "
                 "on this image its output is not meaningful.")
    return text


def is_photo(a: Analysis) -> bool:
    """Whether the image looks unlike our synthetic scenes (larger than them), to warn about zoo models on photos."""
    return max(a.hw) > 160


class Sidebar:
    """Inputs and the headline of an analysis; registers the shared inputs on :class:`Shared`."""

    def __init__(self, shared: Shared, examples: list[Example]) -> None:
        self.shared = shared
        self.examples = examples
        self.example_buttons: list[tuple[Any, int]] = []  # (button, index in examples)

    def build(self) -> None:
        cat = self.shared.engine.catalog
        self.upload = gr.File(label="Upload an image (PNG, JPEG, WebP, GIF, BMP, TIFF)", file_types=["image"], type="filepath", elem_id="upload", height=110)
        self.model = gr.Dropdown(choices=cat.choices(), value=cat.default(), label="Model", elem_id="model")
        self.status = gr.Markdown("Loading the first example…", elem_id="status")
        self.headline = gr.Markdown("", elem_id="headline")
        self.label = gr.Label(num_top_classes=5, label="Prediction", elem_id="prediction", show_heading=False)
        self.pick = gr.Textbox(visible=False, elem_id="example_pick")  # "<example index>:<time>", written by the example buttons
        self._example_buttons()
        with gr.Accordion("Display", open=False):
            cmap = gr.Dropdown(list(render.CMAPS), value="inferno", label="Colormap")
            alpha = gr.Slider(0, 1, value=0.55, step=0.05, label="Opacity of the attention overlay")
            scale = gr.Radio(["per map", "shared"], value="per map", label="Colour scale")
            threshold = gr.Slider(0, 0.95, value=0.0, step=0.05, label="Hide weights below this fraction of the maximum")
        with gr.Accordion("Models that are not available here", open=False):
            gr.Markdown(cat.unavailable_markdown())
        self.shared.add(upload=self.upload, model=self.model, status=self.status, label=self.label, cmap=cmap, alpha=alpha, scale=scale,
                        threshold=threshold)

    def _example_buttons(self) -> None:
        for group in GROUPS:
            items = [(i, e) for i, e in enumerate(self.examples) if e.group == group]
            if not items:
                continue
            gid = "ex_" + "".join(c for c in group.lower() if c.isalnum())[:24]
            with gr.Group(elem_id=gid, elem_classes=["examples"]):
                gr.Markdown(f"**Examples: {group}**", elem_classes=["examples-title"])
                for start in range(0, len(items), 3):
                    with gr.Row(equal_height=True):
                        for i, e in items[start : start + 3]:
                            b = gr.Button(f"{e.title} · {e.model}", icon=str(e.path), size="sm", elem_classes=["example-btn"], min_width=80)
                            self.example_buttons.append((b, i))

    @property
    def outputs(self) -> list[Any]:
        return [self.status, self.headline, self.label]

    @property
    def click_outputs(self) -> list[Any]:
        return [self.headline]  # the clicked pixel's class (segmentation)

    def fill(self, a: Analysis, v: ViewState) -> dict[Any, Any]:
        status = (f"**{html.escape(a.model_name)}** · {html.escape(a.task)} · " + html.escape(modules.status_line(a).split(" · ", 2)[2])
                  + ("" if not a.notes else "  \n_" + html.escape(" · ".join(a.notes)) + "_"))
        label = a.top(5) if a.task == "classification" else {f"{k} (area)": val for k, val in a.top(5).items()}
        return {self.status: status, self.headline: headline(a, v.click), self.label: label}

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.analyze, 2, lambda: [gr.Label(), gr.JSON()], "analyze")]

    @guard
    def analyze(self, image: Any, model_name: str) -> tuple[dict[str, float], dict[str, Any]]:
        """Run a model on an image (one forward with capture, cached): the prediction and a summary of every captured layer.

        Args:
            image: The image file.
            model_name: A model name from the app's list (classification or segmentation).

        Returns:
            Top classes (classification: probabilities; segmentation: area shares) and a JSON summary:
            task, image size, device, forward time, layers and their kinds, click layers with views.
        """
        cat = self.shared.engine.catalog
        if model_name in (None, ""):
            raise UserError(f"model is missing: choose one of {', '.join(cat.available_names())}.")
        a = self.shared.get(image, model_name)
        return a.top(5), modules.summary(a)
