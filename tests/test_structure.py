"""The package's shape: imports point down (no circles), rooms stay small (no hall-sized functions in ui/ or analysis/)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "attnviz"
MAX_FUNCTION_LINES = 80  # in attnviz/ui and attnviz/analysis
MAX_APP_LINES = 250  # attnviz/ui/app.py composes the tabs; it holds none of them


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every attnviz module ``name`` imports, at module level or inside functions (a lazy import is still an edge)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m in known and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_circles_between_modules() -> None:
    """Package ``__init__`` files re-export their own children; every other edge must point one way."""
    mods = modules()
    known = set(mods)
    graph = {n: {m for m in imports_of(n, p, known) if not (p.name == "__init__.py" and m.startswith(n + "."))} for n, p in mods.items()}
    graph = {n: {m for m in deps if mods[m].name != "__init__.py" or not n.startswith(m + ".")} for n, deps in graph.items()}
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph) or [])


def test_finds_a_planted_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("layer", ["models", "capture", "maps", "render", "analysis"])
def test_lower_layers_do_not_import_the_ui_or_gradio(layer: str) -> None:
    for p in (PKG / layer).rglob("*.py"):
        src = p.read_text()
        assert "import gradio" not in src and "from gradio" not in src and "..ui" not in src and "attnviz.ui" not in src, p


def test_the_model_loaders_do_not_import_the_registry() -> None:
    mods = modules()
    for name in ("attnviz.models.hub", "attnviz.models.mmseg", "attnviz.models.zoo", "attnviz.models.seg_zoo"):
        assert "attnviz.models.registry" not in imports_of(name, mods[name], set(mods)), name


def test_functions_in_ui_and_analysis_fit_a_screen() -> None:
    long = []
    for folder in ("ui", "analysis"):
        for p in (PKG / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(p.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                    if n > MAX_FUNCTION_LINES:
                        long.append(f"{p.relative_to(PKG)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_the_app_module_only_composes() -> None:
    assert len((PKG / "ui" / "app.py").read_text().splitlines()) < MAX_APP_LINES
