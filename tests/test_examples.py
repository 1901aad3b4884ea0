"""Every showcase example is one its paired model gets right, through the same path as the app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import attnviz
from attnviz.analysis import Catalog, Engine, Entry
from attnviz.models import registry

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ENTRIES = json.loads((EXAMPLES / "examples.json").read_text()) if (EXAMPLES / "examples.json").exists() else []
ZOO_ENTRIES = [e for e in ENTRIES if "expected" in e or "expected_classes" in e]


def test_examples_file_names_exist_and_models_are_known() -> None:
    if not ENTRIES:
        pytest.skip("no examples.json (python examples/make_examples.py)")
    names = {i.name for i in registry.available()}
    for e in ENTRIES:
        assert (EXAMPLES / e["file"]).is_file(), e["file"]
        assert e["models"] and all(m in names for m in e["models"]), e["models"]
        if e["group"].startswith("Photos"):
            assert e.get("licence"), f"{e['file']} needs its licence"


@pytest.mark.parametrize("entry", ZOO_ENTRIES, ids=[e["file"] for e in ZOO_ENTRIES])
def test_showcase_example_is_right(entry: dict) -> None:
    model = entry["models"][0]
    if not (registry.PRETRAINED_DIR / f"{model}.safetensors").exists():
        pytest.skip(f"{model} is not shipped")
    eng = Engine(Catalog([Entry(model, True, loader=lambda: attnviz.load_pretrained(model))], torch.device("cpu")))
    a = eng.analyze(str(EXAMPLES / entry["file"]), model)
    if "expected" in entry:  # classification: the paired model's top-1 is the item's class
        top = a.top(1)
        assert next(iter(top)) == entry["expected"], (entry["file"], top)
    else:  # segmentation: every item's class is predicted, and nothing else on more than 2% of the image
        areas = a.top(20)
        present = {c for c, share in areas.items() if share >= 0.005}  # small or occluded items count too
        assert set(entry["expected_classes"]) <= present, (entry["file"], areas)
        extra = {c for c, share in areas.items() if share >= 0.02} - set(entry["expected_classes"]) - {a.label(0)}
        assert not extra, (entry["file"], extra, areas)
