"""A real browser (Playwright + Debian's chromium) against the app, as a visitor meets it."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from conftest import free_port

from attnviz.ui.app import TABS

CHROMIUM = os.environ.get("ATTNVIZ_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists(), reason="chromium not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def server():  # type: ignore[no-untyped-def]
    from attnviz.ui import build_demo
    from attnviz.ui.examples import load_examples

    demo = build_demo()
    examples = load_examples(demo.engine.catalog)
    if len(examples) < 3:
        pytest.skip("needs the shipped zoo and its examples")
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True, css=demo.attnviz_css)
    try:
        yield f"http://127.0.0.1:{port}/", demo, examples
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    pw = pytest.importorskip("playwright.sync_api")
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, "--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


def open_page(browser, url: str, width: int = 1400, height: int = 1000):  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_function("() => { const a = document.querySelector('#answer'); return a && a.innerText.includes('cell'); }", timeout=120_000)
    return page, errors


def select_tab(page, name: str) -> None:  # type: ignore[no-untyped-def]
    """Click a tab, through the "More tabs" menu when the layout is too narrow to show it."""
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count() and tab.is_visible():
        tab.click()
        return
    page.locator("button[aria-label='More tabs']").click()
    page.locator(".overflow-dropdown button", has_text=name).first.click()


def upload_page(browser, port: int, img: Path):  # type: ignore[no-untyped-def]
    """A page of the app on ``port`` with ``img`` uploaded; page errors are collected in ``page.errors``."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_selector("#upload input[type=file]", state="attached", timeout=60_000)
    page.set_input_files("#upload input[type=file]", str(img))
    return page


def settle(page, seconds: float = 1.5) -> None:  # type: ignore[no-untyped-def]
    """Wait until no event is pending (Gradio shows a progress tracker while one runs)."""
    deadline = time.time() + 60
    quiet_since = None
    while time.time() < deadline:
        busy = page.evaluate("() => !!document.querySelector('.progress-text, .eta-bar, .generating')")
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.time()
        elif time.time() - quiet_since > seconds:
            return
        time.sleep(0.1)


def test_first_result_without_interaction(server, browser) -> None:  # type: ignore[no-untyped-def]
    url, demo, examples = server
    page, errors = open_page(browser, url)
    first = examples[0]
    status = page.locator("#status").inner_text()
    assert first.model in status and "forward" in status
    assert page.locator("#view_image img").is_visible()
    text = page.locator("#answer").inner_text()
    assert "peaks at" in text and "top 5%" in text
    SHOTS.mkdir(exist_ok=True)
    settle(page)  # no event pending: Gradio greys out components while one runs
    page.screenshot(path=str(SHOTS / "first_result.png"))
    assert not errors, errors
    page.close()


def test_two_examples_in_quick_succession_show_the_second_only(server, browser) -> None:  # type: ignore[no-untyped-def]
    url, demo, examples = server
    page, errors = open_page(browser, url)
    cls = [e for e in examples if e.group.startswith("Zoo scenes (classification)")]
    assert len(cls) >= 2
    gallery = "#ex_zooscenesclassification button.example-btn"
    a, b = cls[-1], cls[0]  # e.g. a Bag scene, then a Shirt scene (different images and models)
    page.locator(gallery).nth(len(cls) - 1).click()
    page.locator(gallery).nth(0).click()
    settle(page)
    expected = demo.engine.analyze(b.path, b.model)  # what the HTTP API answers for the second pick
    top = max(expected.top(1), key=lambda k: expected.top(1)[k])
    status = page.locator("#status").inner_text()
    head = page.locator("#headline").inner_text()
    assert b.model in status and (a.model == b.model or a.model not in status)
    assert head.split(" · ")[0].strip() == top, (head, top)
    assert not errors, errors
    page.close()


def test_the_last_example_picked_always_wins(server, browser) -> None:  # type: ignore[no-untyped-def]
    """Pairs of example buttons clicked 0–500 ms apart, 100 times: the page always settles on the second pick.

    (With one event per button, 10 of 45 pairs once settled on the first: Gradio sends a result after post-processing
    it, so a slower first result could arrive after the second. Picks are now one always_last event.)
    """
    import random

    url, demo, examples = server
    page, errors = open_page(browser, url)
    picks = [e for e in examples if e.group.startswith("Zoo scenes")]
    rng = random.Random(0)
    stale = []
    for k in range(100):
        a, b = rng.sample(picks, 2)
        gap = rng.uniform(0.0, 0.5)
        page.locator("button.example-btn", has_text=f"{a.title} · {a.model}").first.click()
        time.sleep(gap)
        page.locator("button.example-btn", has_text=f"{b.title} · {b.model}").first.click()
        settle(page, 0.8)
        head = page.locator("#status").inner_text().split("\n")[0]
        if not head.startswith(f"{b.model} ·"):
            stale.append((k, a.model, b.model, round(gap, 2), head[:40]))
    assert not stale, stale
    assert not errors, errors
    page.close()


def test_headlines_say_what_matters(server, browser) -> None:  # type: ignore[no-untyped-def]
    """Segmentation: the classes found and the clicked pixel's class, not "background 89 %". A zoo classifier on a
    photo: its label with the caution in the headline itself."""
    url, demo, examples = server
    page, errors = open_page(browser, url)
    seg = next((e for e in examples if e.group == "Zoo scenes (segmentation)"), None)
    if seg is not None:
        page.locator("button.example-btn", has_text=f"{seg.title} · {seg.model}").first.click()
        settle(page)
        head = page.locator("#headline").inner_text()
        assert head.startswith("Found:") and "Clicked pixel" in head and "background" not in head.split("\n")[0].lower(), head
    photo = ROOT / "examples" / "photo_chelsea.png"
    zoo = next((e.model for e in examples if e.group.startswith("Zoo scenes (classification)")), None)
    if photo.exists() and zoo:
        page.locator("#model input").click()
        page.get_by_role("option", name=re.compile(f"^{zoo}")).first.click()
        settle(page)
        page.set_input_files("#upload input[type=file]", str(photo))
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('photo_chelsea')", timeout=60_000)
        settle(page)
        head = page.locator("#headline").inner_text()
        assert "Caution:" in head and "not meaningful" in head, head
    assert not errors, errors
    page.close()


def test_a_bad_upload_clears_the_previous_images_results(server, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, demo, examples = server
    page, errors = open_page(browser, url)
    assert page.locator("#headline").inner_text().strip()
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    page.set_input_files("#upload input[type=file]", str(bad))
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('Error:')", timeout=60_000)
    settle(page)
    status = page.locator("#status").inner_text()
    assert "notes.png" in status and "Nothing is shown" in status, status
    assert page.locator("#view_image img").count() == 0 or not page.locator("#view_image img").is_visible()
    assert page.locator("#answer").inner_text().strip() == "" and page.locator("#headline").inner_text().strip() == ""
    assert "❌" not in status  # words, not an emoji that a font may lack
    assert not errors, errors
    page.close()


def test_answers_are_sentences_and_nothing_covers_the_colour_bar(server, browser) -> None:  # type: ignore[no-untyped-def]
    """Attributions and Modules answer in words (numbers folded away), a classifier's Segmentation tab has no empty frames,
    a segment's Grad-CAM says how much of it lies on the segment, and no image toolbar covers the colour bar's top tick."""
    url, demo, examples = server
    page, errors = open_page(browser, url)
    assert "crosshair = clicked pixel, diamond = peak" in page.locator("#view_image").inner_text()  # the markers, explained
    img, bar = page.locator("#view_image img").bounding_box(), page.locator("#view_image .top-panel").bounding_box()
    assert bar is None or bar["y"] + bar["height"] <= img["y"] + 1, (bar, img)  # type: ignore[index]
    seg = next((e for e in examples if e.group == "Zoo scenes (segmentation)"), None)
    if seg is not None:
        page.locator("button.example-btn", has_text=f"{seg.title} · {seg.model}").first.click()
        settle(page)
        select_tab(page, "Segmentation")
        assert "of the map's mass lies on the segment" in page.locator("[role=tabpanel]:visible").first.inner_text()
    cls = next(e for e in examples if e.group == "Zoo scenes (classification)" and e.model in ("cbam_resnet", "scse_resnet", "gc_resnet"))
    page.locator("button.example-btn", has_text=f"{cls.title} · {cls.model}").first.click()
    settle(page)
    select_tab(page, "Segmentation")
    panel = page.locator("[role=tabpanel]:visible").first
    assert panel.locator("img, input[type=range]").count() == 0 or not any(
        panel.locator("img, input[type=range]").nth(i).is_visible() for i in range(panel.locator("img, input[type=range]").count()))
    select_tab(page, "Attributions")
    page.wait_for_function("() => document.querySelector('#compare_answer').innerText.includes('Spearman')", timeout=60_000)
    assert "related" in page.locator("#compare_answer").inner_text() or "opposed" in page.locator("#compare_answer").inner_text()
    select_tab(page, "Modules")
    assert "press Ablate" in page.locator("#ablate_answer").inner_text()
    page.get_by_role("button", name="Ablate").click()
    page.wait_for_function("() => document.querySelector('#ablate_answer').innerText.includes('Bypassing')", timeout=60_000)
    assert not errors, errors
    page.close()


def test_upload_click_reports_image_pixels(server, browser) -> None:  # type: ignore[no-untyped-def]
    url, demo, examples = server
    page, errors = open_page(browser, url)
    scene = next(e for e in examples if e.group.startswith("Zoo scenes (classification)"))
    page.set_input_files("#upload input[type=file]", str(scene.path))
    model = page.locator('#model input').input_value().split(' ')[0]
    page.wait_for_function(f"() => document.querySelector('#status').innerText.includes('{model}')", timeout=60_000)
    settle(page)
    img = page.locator("#view_image img")
    before = img.get_attribute("src")
    box = img.bounding_box()
    assert box is not None
    # the view is original | overlay | colour bar; click the overlay at 30% / 70% of the image
    nat_w, nat_h = page.evaluate("el => [el.naturalWidth, el.naturalHeight]", img.element_handle())
    a = demo.engine.analyze(scene.path, demo.engine.catalog.default() if not page.locator("#model input").input_value() else scene.model)
    k = a.display_scale
    fx, fy = 0.3, 0.7
    px = (a.hw[1] * k + 6 + fx * a.hw[1] * k) / nat_w * box["width"]
    py = fy * a.hw[0] * k / nat_h * box["height"]
    page.mouse.click(box["x"] + px, box["y"] + py)
    page.wait_for_function("([sel, old]) => { const i = document.querySelector(sel); return i && i.src !== old; }", arg=["#view_image img", before],
                           timeout=60_000)
    settle(page)
    text = page.locator("#answer").inner_text()
    m = re.search(r"Pixel \(([0-9.]+), ([0-9.]+)\)", text)
    assert m, text
    assert abs(float(m.group(1)) - fx * a.hw[1]) <= 1.5 and abs(float(m.group(2)) - fy * a.hw[0]) <= 1.5  # the image's own pixels
    settle(page)  # no event pending: Gradio greys out components while one runs
    page.screenshot(path=str(SHOTS / "screenshot.png"))
    assert not errors, errors
    page.close()


def test_every_tab_has_content_or_an_explanation(server, browser) -> None:  # type: ignore[no-untyped-def]
    url, demo, examples = server
    page, errors = open_page(browser, url)
    tabs = ["Pixel attention", "Transformer", "Segmentation", "Spatial masks", "Channel gates", "SK / DANet", "STN", "Modules", "Attributions"]
    for group in ("Zoo scenes (classification)", "Zoo scenes (segmentation)"):
        if not any(e.group == group for e in examples):
            continue
        gid = "#ex_" + "".join(c for c in group.lower() if c.isalnum())[:24]
        page.locator(f"{gid} button.example-btn").first.click()
        settle(page)
        for name in tabs:
            select_tab(page, name)
            time.sleep(0.3)
            panel = page.locator("[role=tabpanel]:visible").first
            has_media = panel.locator("img, canvas, .js-plotly-plot, svg.main-svg, table").count() > 0
            notes = " ".join(t for t in panel.locator(".note").all_inner_texts() if t.strip())
            assert has_media or notes, f"{group} / {name}: empty"
            if not has_media:
                assert "try" in notes or "model" in notes, notes
        select_tab(page, "Pixel attention")
    assert not errors, errors
    page.close()


def test_segmentation_click_and_legend(server, browser) -> None:  # type: ignore[no-untyped-def]
    url, demo, examples = server
    if not any(e.group == "Zoo scenes (segmentation)" for e in examples):
        pytest.skip("no segmentation example")
    page, errors = open_page(browser, url)
    page.locator("#ex_zooscenessegmentation button.example-btn").first.click()
    settle(page)
    text = page.locator("#answer").inner_text()
    assert "predicted" in text and "area share" in text
    select_tab(page, "Segmentation")
    legend = page.locator("#seg_legend").inner_text()
    assert "class" in legend and "%" in legend
    settle(page)  # no event pending: Gradio greys out components while one runs
    page.screenshot(path=str(SHOTS / "segmentation.png"), full_page=False)
    assert not errors, errors
    page.close()


def test_hover_redraws_in_the_browser(server, browser) -> None:  # type: ignore[no-untyped-def]
    url, demo, examples = server
    page, errors = open_page(browser, url)
    page.get_by_text("Hover to explore").click()
    canvas = page.locator("#hover canvas.av-main")
    canvas.wait_for(state="visible", timeout=30_000)
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 5, box["y"] + 5)
    time.sleep(0.3)
    first = page.evaluate("() => document.querySelector('#hover canvas.av-main').toDataURL()")
    for i in range(20):
        page.mouse.move(box["x"] + box["width"] * (0.1 + 0.04 * i), box["y"] + box["height"] * 0.5)
        page.wait_for_timeout(20)
    time.sleep(0.3)
    frames = int(page.evaluate("() => document.querySelector('#hover').dataset.frames || 0"))
    last = page.evaluate("() => document.querySelector('#hover canvas.av-main').toDataURL()")
    info = page.locator("#hover .av-info").inner_text()
    assert frames >= 5 and last != first and "cell" in info
    assert not errors, errors
    page.close()


WIDER_THAN = """(W) => [...document.querySelectorAll('body *')].filter(el => { const r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && (r.right > W + 1 || r.left < -1) && getComputedStyle(el).visibility !== 'hidden'; })
    .map(el => `${el.tagName}#${el.id}.${String(el.className).slice(0, 30)}`)"""


def test_phone_width(server, browser) -> None:  # type: ignore[no-untyped-def]
    """At 390 px nothing is wider than the screen, the inputs and the prediction come first, then the result."""
    url, demo, examples = server
    page, errors = open_page(browser, url, 390, 844)
    assert page.locator("#view_image img").is_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth") <= 2
    settle(page)
    assert page.evaluate(WIDER_THAN, 390) == []
    top = {sel: page.locator(sel).bounding_box()["y"] for sel in ("#upload", "#model", "#status", "#view_image", "#answer")}  # type: ignore[index]
    assert top["#upload"] < top["#model"] < top["#status"] < top["#view_image"] < top["#answer"], top
    assert top["#upload"] < 600, top  # the inputs are near the top, not below the result
    tabs = page.locator("#results [role=tab]")
    n = len(TABS)
    assert tabs.count() == n and all(tabs.nth(i).is_visible() for i in range(n))  # the tab strip wraps, nothing cut
    page.screenshot(path=str(SHOTS / "phone.png"), full_page=False)
    assert not errors, errors
    page.close()


def test_every_tab_is_in_the_strip_at_desktop_width(server, browser) -> None:  # type: ignore[no-untyped-def]
    url, demo, examples = server
    page, errors = open_page(browser, url)
    names = [t.strip() for t in page.locator("#results [role=tab]").all_inner_texts()]
    assert names == [t.title for t in TABS], names  # every tab in the strip, none in a "⋯" menu
    pad = page.evaluate("() => parseFloat(getComputedStyle(document.querySelector('#model input')).paddingRight)")
    assert pad >= 20, pad  # the model name stops before the dropdown arrow
    page.close()


def test_video_tab_plays_the_returned_clip(server, browser) -> None:  # type: ignore[no-untyped-def]
    url, _, _ = server
    clip = ROOT / "examples" / "clip_moving_item.mp4"
    page, errors = open_page(browser, url)
    select_tab(page, "Video")
    page.wait_for_selector("#video_upload input[type=file]", state="attached", timeout=60_000)
    page.wait_for_function("() => document.querySelector('#video_note').innerText.includes('Maps this model has')", timeout=60_000)
    page.set_input_files("#video_upload input[type=file]", str(clip))
    frame = page.locator("#video_frame img")
    frame.wait_for(state="visible", timeout=60_000)
    x0 = page.locator("#video_x input").input_value()
    assert x0 not in ("", "0")  # the query starts at the frame centre, never 0/0
    page.locator("#video_button").click()
    video = page.locator("#video_out video")
    video.wait_for(state="attached", timeout=180_000)
    page.wait_for_function("() => { const v = document.querySelector('#video_out video'); return v && (v.readyState >= 2 || v.error); }", timeout=60_000)
    state = page.evaluate("() => { const v = document.querySelector('#video_out video'); "
                          "return [v.readyState, v.error && v.error.code, v.duration, v.videoWidth]; }")
    assert state[0] >= 2 and state[1] is None, state
    assert state[2] > 2.5 and state[3] >= 256, state  # the whole 3 s clip (plus its colour bar)
    assert "frames" in page.locator("#video_info").inner_text()
    assert not errors, errors
    page.close()


def test_atlas_tab_runs_and_opens_an_atlas(server, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Run a small atlas over generated scenes from the tab, read its plots, pick a layer; then open a zipped atlas."""
    import zipfile

    import attnviz
    from attnviz.atlas import AtlasOptions, run_atlas, scene_source

    url, _, _ = server
    page, errors = open_page(browser, url)
    select_tab(page, "Atlas")
    page.get_by_label("64 generated scenes").check()
    page.locator("#atlas_run").click()
    page.wait_for_function("() => document.querySelector('#atlas_summary').innerText.includes('64 images')", timeout=180_000)
    settle(page)
    page.screenshot(path=str(SHOTS / "atlas_tab.png"), full_page=True)
    assert page.locator("[id^=atlas_plot]:visible").count() >= 3, page.locator("#atlas_summary").inner_text()
    assert page.locator("#atlas_class input").input_value() and page.locator("#atlas_layer input").input_value()
    page.locator("#atlas_class_plot").scroll_into_view_if_needed()
    assert page.locator("#atlas_class_plot img, #atlas_class_plot svg, #atlas_class_plot canvas").count() > 0
    page.screenshot(path=str(SHOTS / "atlas_tab.png"), full_page=True)
    out = tmp_path / "se"
    run_atlas(attnviz.load_pretrained("se_resnet"), scene_source(16, ["flat"]), out, AtlasOptions(batch_size=8, workers=0, model_name="se_resnet"))
    zipped = tmp_path / "se.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        for f in out.iterdir():
            if f.is_file():
                z.write(f, f.name)
    page.set_input_files("#atlas_upload input[type=file]", str(zipped))
    page.wait_for_function("() => document.querySelector('#atlas_summary').innerText.includes('16 images')", timeout=60_000)
    assert "se_resnet" in page.locator("#atlas_summary").inner_text()
    assert not errors, errors
    page.close()


def test_api_page_lists_endpoints(server, browser) -> None:  # type: ignore[no-untyped-def]
    url, _, _ = server
    import urllib.request

    info = json.loads(urllib.request.urlopen(url + "gradio_api/info", timeout=30).read())
    names = set(info["named_endpoints"])
    assert {"/analyze", "/attention_at", "/segmentation", "/export", "/analyze_video", "/video_frame"} <= names


def test_zoo_vit_class_token_on_its_example(server, browser) -> None:  # type: ignore[no-untyped-def]
    """The shipped ViT on its example scene: the Transformer tab's class-token grid, rollout and distances (README screenshot)."""
    url, demo, examples = server
    ex = next((e for e in examples if e.model == "vit_tiny"), None)
    if ex is None:
        pytest.skip("vit_tiny is not shipped in this checkout")
    page, errors = open_page(browser, url)
    page.locator("button.example-btn", has_text=f"{ex.title} · vit_tiny").first.click()
    page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('vit_tiny')", timeout=60_000)
    settle(page)
    assert ex.expected in page.locator("#headline").inner_text()
    select_tab(page, "Transformer")
    page.locator("#tf_query label", has_text="class token").click()
    settle(page)
    page.locator("#head_grid img").wait_for(state="visible", timeout=60_000)
    assert page.locator("#rollout img").is_visible()
    answer = page.locator("#tf_answer").inner_text()
    assert "4 self-attention layers with 4 heads over a 8×8 patch grid" in answer, answer
    page.screenshot(path=str(SHOTS / "vit_tiny.png"), full_page=True)
    assert not errors, errors
    page.close()


def test_vit_head_grid_and_rollout_in_the_browser(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A user's ViT: upload an image, the Transformer tab shows every layer × head and the rollout (README screenshot)."""
    timm = pytest.importorskip("timm")
    import numpy as np
    import torch
    from PIL import Image

    from attnviz.ui import build_demo

    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=(128, 192), depth=4, num_classes=3).eval()
    vit.card = {"input_size": [128, 192], "class_names": ["p", "q", "r"]}
    demo = build_demo(models={"vit": vit}, include_registry=False)
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True, css=demo.attnviz_css)
    try:
        photo = ROOT / "examples" / "photo_chelsea.png"
        img = tmp_path / "cat.png"
        Image.fromarray(np.asarray(Image.open(photo).convert("RGB").resize((192, 128)))).save(img)
        page = upload_page(browser, port, img)
        errors = page.errors
        page.wait_for_function("() => document.querySelector('#answer').innerText.includes('prefix tokens')", timeout=120_000)
        select_tab(page, "Transformer")
        page.locator("#head_grid img").wait_for(state="visible", timeout=60_000)
        assert page.locator("#rollout img").is_visible()
        assert "4 self-attention layers with 6 heads" in page.locator("#tf_answer").inner_text()
        settle(page)
        page.screenshot(path=str(SHOTS / "vit_head_grid.png"), full_page=True)
        grid = page.locator("#head_grid img")
        box = grid.bounding_box()
        grid.click(position={"x": box["width"] * 0.6, "y": box["height"] * 0.42})  # layer 1, head 3 of the 4 × 6 grid
        page.locator("#head_opened img").wait_for(state="visible", timeout=60_000)
        assert "blocks.1.attn, head 3" in page.locator("#head_opened_note").inner_text()
        assert not page.locator("#grad_rollout").is_visible()  # no empty panel before it is asked for
        page.locator("#grad_rollout_btn").click()
        page.locator("#grad_rollout img").wait_for(state="visible", timeout=60_000)
        page.wait_for_function("() => document.querySelector('#grad_note').innerText.includes('Gradient-weighted rollout of')", timeout=30_000)
        select_tab(page, "Pixel attention")  # hover: the page forms the transformer's rows itself (prefix tokens in the softmax)
        page.get_by_text("Hover to explore").click()
        canvas = page.locator("#hover canvas.av-main")
        canvas.wait_for(state="visible", timeout=30_000)
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        for i in range(10):
            page.mouse.move(box["x"] + box["width"] * (0.1 + 0.08 * i), box["y"] + box["height"] * 0.5)
            page.wait_for_timeout(30)
        time.sleep(0.3)
        assert int(page.evaluate("() => document.querySelector('#hover').dataset.frames || 0")) >= 3
        assert "cell" in page.locator("#hover .av-info").inner_text()
        assert not errors, errors
        page.close()
    finally:
        demo.close()


def test_swin_stages_in_the_head_grid(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A user's Swin: the head grid shows the first stage; picking the second under *Stage* redraws the grid with that
    stage's layers, and a thumbnail opened then is one of them."""
    timm = pytest.importorskip("timm")
    import numpy as np
    import torch
    from PIL import Image

    from attnviz.ui import build_demo

    torch.manual_seed(0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, window_size=7, embed_dim=24,
                             depths=(2, 2), num_heads=(2, 4), num_classes=3).eval()
    swin.card = {"input_size": [56, 56], "class_names": ["p", "q", "r"]}
    demo = build_demo(models={"swin": swin}, include_registry=False)
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True, css=demo.attnviz_css)
    try:
        img = tmp_path / "cat.png"
        Image.fromarray(np.asarray(Image.open(ROOT / "examples" / "photo_chelsea.png").convert("RGB").resize((56, 56)))).save(img)
        page = upload_page(browser, port, img)
        errors = page.errors
        select_tab(page, "Transformer")
        grid = page.locator("#head_grid img")
        grid.wait_for(state="visible", timeout=120_000)
        first = grid.get_attribute("src")
        page.locator("#tf_stage input").click()
        page.get_by_role("option", name="7×7 cells, 4 heads, 2 layers").click()
        page.wait_for_function("(s) => document.querySelector('#head_grid img').getAttribute('src') !== s", arg=first, timeout=60_000)
        settle(page)
        box = grid.bounding_box()
        grid.click(position={"x": box["width"] * 0.63, "y": box["height"] * 0.78})  # head 2 of the second row (layer), figure centred
        page.locator("#head_opened img").wait_for(state="visible", timeout=60_000)
        assert "layers.1.blocks.1.attn, head 2" in page.locator("#head_opened_note").inner_text()
        assert "Stage picks which" in page.locator("#tf_answer").inner_text()
        assert not errors, errors
        page.close()
    finally:
        demo.close()
