"""Every README snippet runs as written: Python blocks, the HTTP client against a live app, CLI lines."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PY = re.findall(r"```python\n(.*?)```", README, re.S)
SH = [line for block in re.findall(r"```bash\n(.*?)```", README, re.S) for line in block.replace("\\\n", " ").splitlines()]  # continued lines joined


def needs_zoo() -> None:
    for name in ("ccnet_resnet", "ccnet_seg"):
        scene = ROOT / "examples" / f"scene_{name.replace('_seg', '')}.png"
        if not (ROOT / "pretrained" / f"{name}.safetensors").exists() or not scene.exists() and name == "ccnet_resnet":
            pytest.skip("needs the shipped zoo and its examples")


@pytest.mark.parametrize("i", [i for i, b in enumerate(PY) if "Client(" not in b and "build_demo" not in b])
def test_python_snippet_runs(i: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    needs_zoo()
    monkeypatch.chdir(ROOT)
    namespace: dict[str, object] = {}
    code = PY[i].replace("print(export_bundle(a, click=(40, 60)))", f"print(export_bundle(a, click=(40, 60), folder={str(tmp_path)!r}))")
    exec(compile(code, f"README python block {i}", "exec"), namespace)  # noqa: S102 (our own README)
    out = capsys.readouterr().out
    assert out.strip(), "a README snippet should print something real"
    assert "context.cca" in out or "sums to 1" in out or ".zip" in out or "blocks.11.attn ['cls', 'reg0'" in out


def test_client_snippet_against_a_live_app(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    needs_zoo()
    from attnviz.ui import build_demo

    block = next(b for b in PY if "Client(" in b)
    demo = build_demo()
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True)
    try:
        monkeypatch.chdir(ROOT)
        exec(compile(block.replace("http://127.0.0.1:7860/", f"http://127.0.0.1:{port}/"), "README client", "exec"), {})  # noqa: S102
    finally:
        demo.close()
    assert "classification" in capsys.readouterr().out


def test_files_named_in_commands_exist() -> None:
    for line in SH:
        for tok in shlex.split(line, comments=True):
            if tok.startswith(("examples/", "pretrained/", "docs/")) and not tok.endswith("/"):
                assert (ROOT / tok).exists(), f"README names {tok}, which does not exist"


@pytest.mark.parametrize("line", [ln for ln in SH if ln.startswith("attnviz ") and (ln.split()[1] in ("analyze", "inspect", "models", "video")
                                                                                    or ln.split()[1] == "atlas" and "--scenes" in ln)])
def test_cli_lines_run(line: str, tmp_path: Path) -> None:
    needs_zoo()
    args = shlex.split(line, comments=True)
    args = [str(tmp_path / a[4:]) if a.startswith("out/") else a for a in args]
    r = subprocess.run([sys.executable, "-m", "attnviz", *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and r.stdout.strip()


def test_generated_tables_are_current() -> None:
    """The zoo and mmseg tables are what ``python -m attnviz.docs`` writes from the cards, never hand-edited."""
    from attnviz import docs

    for fname, required in docs.FILES.items():
        text = (ROOT / fname).read_text()
        assert docs.render(text, required) == text, f"{fname} tables are out of date: run python -m attnviz.docs"
        assert "not evaluated" not in text, "every shipped model needs `attnviz evaluate --write-card`"
