"""Hover exploration in a real browser: bytes sent once and the redraw rate (target ≥ 30 fps).

    python bench/hover.py [--moves 300]

Starts the app, opens it in Debian's chromium (Playwright, 1400×1000), and for each example whose model
has a click layer opens "Hover to explore", then moves the pointer over the map ``--moves`` times, one
synthetic ``mousemove`` per animation frame dispatched inside the page (no driver round trips, so the
observed rate is the page's own, capped by the browser's frame rate). Reports the payload (float32 queries/keys or rows, sent once), the mean
time the page spends computing and painting one map (``paint``), the redraw capacity that implies
(1000 / mean paint ms) and the redraws actually observed per second while moving. Writes
``bench/out/hover.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
CHROMIUM = os.environ.get("ATTNVIZ_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--moves", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "hover.json"))
    args = ap.parse_args()
    from conftest import free_port
    from playwright.sync_api import sync_playwright

    from attnviz.analysis import click
    from attnviz.ui import build_demo
    from attnviz.ui.examples import load_examples

    demo = build_demo()
    examples = [e for e in load_examples(demo.engine.catalog) if e.group.startswith("Zoo scenes")]
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True, css=demo.attnviz_css)
    url = f"http://127.0.0.1:{port}/"
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for ex in examples:
            a = demo.engine.analyze(ex.path, ex.model)
            if not click.click_choices(a):
                continue
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_function("() => { const a = document.querySelector('#answer'); return a && a.innerText.includes('cell'); }",
                                   timeout=120_000)
            group = re.sub(r"[^a-z]", "", ex.group.lower())
            same = [e for e in examples if e.group == ex.group]
            page.locator(f"#ex_{group} button.example-btn").nth(same.index(ex)).click()
            page.wait_for_function(f"() => document.querySelector('#status').innerText.includes('{ex.model}')", timeout=120_000)
            time.sleep(1.0)
            page.get_by_text("Hover to explore").click()
            canvas = page.locator("#hover canvas.av-main")
            canvas.wait_for(state="visible", timeout=30_000)
            canvas.scroll_into_view_if_needed()
            time.sleep(0.5)
            msg = page.locator("#hover").inner_text()
            kb = re.search(r"\((\d+) KB sent once\)", msg)
            box = canvas.bounding_box()
            assert box is not None
            f0 = int(page.evaluate("() => document.querySelector('#hover').dataset.frames || 0"))
            ms0 = float(page.evaluate("() => document.querySelector('#hover').dataset.ms || 0"))
            wall = page.evaluate("""(n) => new Promise((resolve) => {
                const c = document.querySelector('#hover canvas.av-main'); const r = c.getBoundingClientRect();
                let i = 0; const t0 = performance.now();
                function step() {  // one synthetic pointer move per animation frame, no driver round trips
                    if (i >= n) { requestAnimationFrame(() => resolve((performance.now() - t0) / 1000)); return; }
                    const u = (i * 0.618) % 1, v = (i * 0.382) % 1; i += 1;
                    c.dispatchEvent(new MouseEvent('mousemove', {bubbles: true, clientX: r.left + r.width * (0.02 + 0.96 * u),
                                                                 clientY: r.top + r.height * (0.02 + 0.96 * v)}));
                    requestAnimationFrame(step);
                }
                requestAnimationFrame(step);
            })""", args.moves)
            frames = int(page.evaluate("() => document.querySelector('#hover').dataset.frames || 0")) - f0
            ms = float(page.evaluate("() => document.querySelector('#hover').dataset.ms || 0")) - ms0
            paint = ms / max(frames, 1)
            rows.append({"model": ex.model, "example": ex.title, "payload_kb": int(kb.group(1)) if kb else None, "frames": frames,
                         "paint_ms_mean": round(paint, 2), "capacity_fps": round(1000 / paint, 1) if paint else None,
                         "observed_fps": round(frames / wall, 1)})
            print(rows[-1], flush=True)
            page.close()
        browser.close()
    demo.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"viewport": "1400×1000", "browser": "chromium (Debian), headless", "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
