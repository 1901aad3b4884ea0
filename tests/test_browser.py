"""A real browser (Playwright + Debian's chromium): upload, click a pixel, see that pixel's attention."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import free_port

CHROMIUM = os.environ.get("ATTNVIZ_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "screenshot.png"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists(), reason="chromium not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def server():  # type: ignore[no-untyped-def]
    from attnviz.ui import build_demo

    demo = build_demo()
    if not demo.engine.catalog.entries["ccnet_resnet"].available:
        pytest.skip("no shipped ccnet_resnet checkpoint")
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", demo
    finally:
        demo.close()


def test_upload_click_and_overlay(server) -> None:  # type: ignore[no-untyped-def]
    pw = pytest.importorskip("playwright.sync_api")
    url, demo = server
    scene = sorted((ROOT / "examples").glob("scene_*.png"))[1]
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_selector("#upload input[type=file]", state="attached", timeout=60_000)
        page.set_input_files("#upload input[type=file]", str(scene))
        img = page.locator("#click_image img")
        img.wait_for(state="visible", timeout=120_000)
        before = img.get_attribute("src")
        nat_w, nat_h = page.evaluate("el => [el.naturalWidth, el.naturalHeight]", img.element_handle())
        box = img.bounding_box()
        assert box is not None and nat_w > 0
        fx, fy = 0.3, 0.7
        page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        page.wait_for_function("([sel, old]) => { const i = document.querySelector(sel); return i && i.src !== old; }",
                               arg=["#click_image img", before], timeout=60_000)
        after = img.get_attribute("src")
        assert after != before  # the overlay replaced the plain image
        text = page.locator("#click_info").inner_text()
        assert "context.cca" in text and "reach" in text
        # the server received the clicked pixel (within 3 image pixels of where we clicked)
        xs = re.findall(r'"?x"?\s*:?\s*\n?\s*([0-9.]+)', text)
        ys = re.findall(r'"?y"?\s*:?\s*\n?\s*([0-9.]+)', text)
        assert xs and ys, text
        assert abs(float(xs[0]) - fx * nat_w) <= 3 and abs(float(ys[0]) - fy * nat_h) <= 3, (xs, ys, nat_w, nat_h)
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=False)
        assert not errors, errors
        browser.close()


def test_video_tab_plays_the_returned_clip(server) -> None:  # type: ignore[no-untyped-def]
    pw = pytest.importorskip("playwright.sync_api")
    url, _ = server
    clip = ROOT / "examples" / "clip_moving_item.mp4"
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, "--autoplay-policy=no-user-gesture-required"])
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(url)
        page.get_by_role("tab", name="Video").click()
        page.wait_for_selector("#video_upload input[type=file]", state="attached", timeout=60_000)
        page.set_input_files("#video_upload input[type=file]", str(clip))
        frame = page.locator("#video_frame img")
        frame.wait_for(state="visible", timeout=60_000)  # the upload finished and a frame came back
        box = frame.bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # the query point; kind becomes "query"
        page.wait_for_function("() => document.querySelector('#video_kind input').value === 'query'", timeout=30_000)
        page.locator("#video_button").click()
        video = page.locator("#video_out video")
        video.wait_for(state="attached", timeout=180_000)
        page.wait_for_function("() => { const v = document.querySelector('#video_out video'); return v && (v.readyState >= 2 || v.error); }", timeout=60_000)
        state = page.evaluate("() => { const v = document.querySelector('#video_out video'); return [v.readyState, v.error && v.error.code, v.duration, v.videoWidth]; }")
        assert state[0] >= 2 and state[1] is None, state
        assert state[2] > 2.5 and state[3] == 256, state  # the whole 3 s clip at its own size
        browser.close()
