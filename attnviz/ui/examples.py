"""The app's examples: thumbnails grouped by kind, each paired only with models it makes sense for.

``examples/examples.json`` (written by ``examples/make_examples.py``) lists each file with its group,
title, the models it suits (in order of preference) and the pixel to click first. An example is shown
with the first of its models that is available here, and not at all when none is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..analysis import Catalog

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass
class Example:
    """One example image with the model it is shown with and the pixel clicked first."""

    path: Path
    group: str
    title: str
    model: str
    click: tuple[float, float] | None = None
    expected: str | None = None  # the class its model should predict (checked by the test suite)
    licence: str = ""  # for photos we did not make


def load_examples(cat: Catalog, folder: Path = EXAMPLES) -> list[Example]:
    """Examples whose paired model is available, the showcase (first) example first."""
    index = folder / "examples.json"
    if not index.exists():
        return []
    ok = set(cat.available_names())
    out: list[Example] = []
    for item in json.loads(index.read_text()):
        path = folder / item["file"]
        model = next((m for m in item["models"] if m in ok), None)
        if model is None or not path.exists():
            continue
        click = tuple(item["click"]) if item.get("click") else None
        out.append(Example(path, item["group"], item["title"], model, click, item.get("expected"), item.get("licence", "")))  # type: ignore[arg-type]
    return out
