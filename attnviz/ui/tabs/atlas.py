"""The Atlas tab: open a finished attention atlas (the zip of an ``attnviz atlas`` output folder) or run a small one over
the shipped examples or generated scenes, then read its plots; a class shows its excitation per block, a layer its
distance and query dependence per head."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import gradio as gr

from ...analysis import UserError
from ...analysis.workdirs import unique_path, work_dir
from ...atlas import AtlasError, AtlasOptions, Item, Source, run_atlas, scene_source
from ...atlas.view import OpenedAtlas, class_figure, layer_figure, layer_table, open_atlas, summary
from ..common import Endpoint, Tab, ViewState, guard
from ..examples import EXAMPLES

PLOTS = 5  # report figures shown (SENet curves, selectivity, distance map, query dependence / same-class mass, confusion)
DATA = ("shipped examples", "64 generated scenes")
ABOUT = ("Dataset-level statistics of every attention layer (`attnviz atlas --model M --data DIR --out OUT`; see the README). "
         "Open the **zip of an atlas folder**, or run a small atlas here. Choose a class to see its excitation per block (SENet's "
         "figure), a layer to see its distance and query dependence per head.")


class AtlasTab(Tab):
    """Open or run an atlas; its plots, a class's excitation, a layer's heads."""

    title, id = "Atlas", "atlas"

    def build(self) -> None:
        cat = self.shared.engine.catalog
        gr.Markdown(ABOUT)
        with gr.Row():
            self.upload = gr.File(label="Open an atlas (zip of its output folder)", file_types=[".zip"], type="filepath", elem_id="atlas_upload",
                                  height=110)
            with gr.Column():
                zoo = [c for c in cat.choices() if cat.entries[c[1]].source == "attnviz" and cat.entries[c[1]].available] or cat.choices()
                names = [v for _, v in zoo]
                first = next((n for n in ("se_resnet", "cbam_resnet", "nonlocal_resnet") if n in names), names[0] if names else None)
                self.model = gr.Dropdown(choices=zoo, value=first, label="Model for a new atlas", elem_id="atlas_model")
                self.data = gr.Radio(list(DATA), value=DATA[0], label="Data", elem_id="atlas_data")
                self.run_btn = gr.Button("Run a small atlas", variant="primary", elem_id="atlas_run")
        self.summary = gr.Markdown("", elem_id="atlas_summary")
        self.plots = [gr.Plot(visible=False, elem_id=f"atlas_plot{i}") for i in range(PLOTS)]
        with gr.Row():
            self.cls = gr.Dropdown([], label="Class", elem_id="atlas_class")
            self.layer = gr.Dropdown([], label="Layer", elem_id="atlas_layer")
        with gr.Row():
            self.cls_plot = gr.Plot(label="Excitation of the class", elem_id="atlas_class_plot")
            self.layer_plot = gr.Plot(label="The layer per head", elem_id="atlas_layer_plot")
        self.table = gr.Dataframe(label="The layer's statistics", interactive=False, elem_id="atlas_table")
        self.files = gr.File(label="report.html and the atlas (zip)", file_count="multiple", elem_id="atlas_files")
        self.state = gr.State(None)

    outputs: list[Any] = []  # an atlas is not about the current image

    def fill(self, a: Any, v: ViewState) -> dict[Any, Any]:
        return {}

    @property
    def _shown(self) -> list[Any]:
        return [self.state, self.summary, *self.plots, self.cls, self.layer, self.cls_plot, self.layer_plot, self.table, self.files]

    def _show(self, at: OpenedAtlas, files: list[str]) -> list[Any]:
        figs = at.figures()[:PLOTS]
        plots = [gr.update(value=f, visible=True, label=t) for t, f in figs] + [gr.update(value=None, visible=False)] * (PLOTS - len(figs))
        layer = at.layers[0] if at.layers else None
        cls = at.classes[0] if at.classes else None
        return [str(at.folder), summary(at), *plots,
                gr.update(choices=at.classes, value=cls), gr.update(choices=at.layers, value=layer),
                class_figure(at, cls) if cls else None, layer_figure(at, layer) if layer else None,
                layer_table(at, layer) if layer else None, files]

    def _opened(self, folder: Any) -> OpenedAtlas:
        if not folder:
            raise UserError("open an atlas first (its zip), or run one.")
        try:
            return open_atlas(folder)
        except AtlasError as e:
            raise UserError(str(e)) from None

    def wire(self) -> None:
        self.upload.upload(guard(self.open_zip), [self.upload], self._shown, api_visibility="private")
        self.run_btn.click(guard(self.run), [self.model, self.data], self._shown, api_visibility="private")
        self.cls.change(guard(lambda f, c: class_figure(self._opened(f), c) if c else None), [self.state, self.cls], [self.cls_plot],
                        api_visibility="private")
        self.layer.change(guard(lambda f, n: (layer_figure(self._opened(f), n), layer_table(self._opened(f), n)) if n else (None, None)),
                          [self.state, self.layer], [self.layer_plot, self.table], api_visibility="private")

    def open_zip(self, path: Any) -> list[Any]:
        if not path:
            raise UserError("choose the zip of an atlas folder.")
        try:
            at = open_atlas(Path(path), unique_path(work_dir("atlas"), "opened", ""))
        except AtlasError as e:
            raise UserError(str(e)) from None
        return self._show(at, [str(at.folder / "report.html")] if (at.folder / "report.html").is_file() else [])

    def run(self, model_name: str, data: str, progress: gr.Progress = gr.Progress()) -> list[Any]:
        at = self.run_atlas(model_name, data, progress)
        zipped = at.folder.with_suffix(".zip")
        with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:  # the atlas's files, not its shards
            for p in sorted(at.folder.iterdir()):
                if p.is_file() and p.name != "manifest.json":
                    z.write(p, p.name)
        return self._show(at, [str(at.folder / "report.html"), str(zipped)])

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.atlas, 2, lambda: [gr.Markdown(), gr.JSON()], "atlas")]

    @guard
    def atlas(self, model_name: str, data: str = DATA[0]) -> tuple[str, dict[str, Any]]:
        """Run a small attention atlas with a model over the shipped examples or 64 generated scenes.

        Args:
            model_name: The model.
            data: 'shipped examples' or '64 generated scenes'.

        Returns:
            The atlas in sentences, and its atlas.json (metrics, counts, skipped files).
        """
        at = self.run_atlas(model_name, data, None)
        info = {k: v for k, v in at.info.items() if k not in ("columns", "statistics")}  # the documentation stays in atlas.json
        info["skipped"] = [{"file": s["path"], "reason": s["reason"]} for s in info.get("skipped", [])]  # a "path" key reads as a file upload
        return summary(at), info

    def run_atlas(self, model_name: str, data: str, progress: Any) -> OpenedAtlas:
        """Run an atlas into this server's work folder (the model's lock is held: its hooks are not shared)."""
        if data not in DATA:
            raise UserError(f"data must be one of {', '.join(DATA)}; got {data!r}.")
        eng = self.shared.engine
        model = eng.catalog.get(eng.catalog.entry(model_name).name)
        card = getattr(model, "card", None) or {}
        try:
            if data == DATA[0]:
                source = Source([Item(str(p)) for p in sorted(EXAMPLES.glob("*.png"))], description="the shipped example images")
            else:
                source = scene_source(64, task=str(card.get("task", "classification")))
            out = unique_path(work_dir("atlas"), model_name, "")
            tick = (lambda d, t: progress(d / max(t, 1), desc=f"{d}/{t} images")) if progress is not None else None
            with eng.model_lock(eng.catalog.entry(model_name).name):
                run_atlas(model, source, out, AtlasOptions(batch_size=16, workers=0, model_name=model_name), tick)
            return open_atlas(out)
        except AtlasError as e:
            raise UserError(str(e)) from None
        except Exception as e:
            if type(e).__name__ == "DatasetMissing":
                raise UserError(f"generated scenes need Fashion-MNIST here ({e}); use the shipped examples") from None
            raise
