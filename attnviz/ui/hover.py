"""Hover exploration: the browser redraws a layer's map for the query under the pointer, no server round trip.

For layers with at most :data:`MAX_POSITIONS` query positions the page receives, once per analysis, what
the rows are computed from — queries and keys (float32) for Non-Local / DANet / transformer rows (prefix tokens
included in the softmax, left out of the map) and CCNet loops (the
browser forms the softmax rows and the two-hop reach with the same formulas as
:mod:`attnviz.capture.records` and :mod:`attnviz.maps.reach`), or the pixel → region weights and region
maps for OCR. That is far smaller than all rows (O(N·d) instead of O(N²)). A click pins a query;
larger maps, and rows with relative-position logits (BotNet), fall back to server clicks.
"""

from __future__ import annotations

import base64
import io
import secrets
from typing import Any

import numpy as np
from PIL import Image

from .. import render
from ..analysis import Analysis
from ..capture.records import Affinity, CrissCross, RegionAttention
from ..maps import click_layers

MAX_POSITIONS = 64 * 64
MAX_BYTES = 8 * 2**20

TEMPLATE = """
<div class="av-hover" data-id="${value.id || ''}">
  <div class="av-msg">${value.message || ''}</div>
  <canvas class="av-main" width="${value.cw || 0}" height="${value.ch || 0}" style="${value.cw ? '' : 'display:none'}"></canvas>
  <div class="av-info">${value.cw ? 'Move the pointer over the image; click to pin or release a query.' : ''}</div>
</div>
"""

CSS = """
.av-hover { font-size: 13px; }
.av-hover canvas { cursor: crosshair; max-width: 100%; image-rendering: auto; border: 1px solid #ccc; }
.av-hover .av-info { font-family: monospace; margin-top: 4px; min-height: 1.4em; }
.av-hover .av-msg { color: #666; }
"""

JS = r"""
const S = { id: null, v: null, base: null, pinned: null, frames: 0, ms: 0 };
function f32(b64) { const s = atob(b64); const u = new Uint8Array(s.length); for (let i = 0; i < s.length; i++) u[i] = s.charCodeAt(i); return new Float32Array(u.buffer); }
function ready() {
  const v = props.value;
  if (!v || !v.id) { S.v = null; return null; }
  if (S.id !== v.id) {
    S.id = v.id; S.pinned = null;
    const d = { ...v, arrays: {} };
    for (const k of Object.keys(v.data || {})) d.arrays[k] = f32(v.data[k]);
    d.lut = f32(v.lut);
    const img = new Image(); img.onload = () => { S.base = img; paint(null); }; img.src = v.image;
    S.v = d; S.base = null;
  }
  return S.v;
}
function softmaxInto(out, logits) { let m = -Infinity; for (const x of logits) if (x > m) m = x; let s = 0; for (let i = 0; i < logits.length; i++) { out[i] = Math.exp(logits[i] - m); s += out[i]; } for (let i = 0; i < out.length; i++) out[i] /= s; }
function cross(L, y, x, H, W) {  // loop weights of query (y, x): [col (H), row (W)]
  const a = new Float64Array(H + W);
  if (L.att) { const o = ((y * W) + x) * (H + W); for (let i = 0; i < H + W; i++) a[i] = L.att[o + i]; }
  else {
    const C = L.c, q = L.q, k = L.k, lg = new Float64Array(H + W);
    for (let h = 0; h < H; h++) { if (h === y) { lg[h] = -Infinity; continue; } let s = 0; for (let c = 0; c < C; c++) s += q[(c * H + y) * W + x] * k[(c * H + h) * W + x]; lg[h] = s; }
    for (let w = 0; w < W; w++) { let s = 0; for (let c = 0; c < C; c++) s += q[(c * H + y) * W + x] * k[(c * H + y) * W + w]; lg[H + w] = s; }
    softmaxInto(a, lg);
  }
  return a;
}
function mapAt(v, cy, cx) {
  const H = v.fh, W = v.fw;
  if (v.kind === 'affinity') {  // prefix tokens (class, registers) first in the queries (pq) and the keys (pk) of transformers
    const pq = v.pq || 0, pk = v.pk || 0, M = v.m, MA = M + pk, D = v.d, heads = v.heads, q = v.arrays.q, k = v.arrays.k;
    const out = new Float64Array(M), lg = new Float64Array(MA), row = new Float64Array(MA);
    const n = pq + cy * W + cx;
    for (let h = 0; h < heads; h++) {
      if (v.matrix) { for (let m = 0; m < MA; m++) row[m] = v.arrays.matrix[(h * v.n + n) * MA + m]; }
      else {
        for (let m = 0; m < MA; m++) { let s = 0; for (let d = 0; d < D; d++) s += q[(h * v.n + n) * D + d] * k[(h * D + d) * MA + m]; lg[m] = s * v.scale; }
        if (v.normalize === 'softmax') softmaxInto(row, lg); else for (let m = 0; m < MA; m++) row[m] = lg[m] / MA;
      }
      for (let m = 0; m < M; m++) out[m] += row[pk + m] / heads;  // the patch keys; the prefix tokens' share is left out (sum < 1)
    }
    return out;
  }
  if (v.kind === 'regions') {
    const K = v.k, R = v.rh * v.rw, p = v.arrays.p, r = v.arrays.r, out = new Float64Array(R), n = cy * W + cx;
    for (let j = 0; j < K; j++) { const w = p[n * K + j]; for (let i = 0; i < R; i++) out[i] += w * r[j * R + i]; }
    return out;
  }
  const L1 = { c: v.c, q: v.arrays.q1, k: v.arrays.k1, att: v.arrays.a1 }, L2 = { c: v.c, q: v.arrays.q2, k: v.arrays.k2, att: v.arrays.a2 };
  const out = new Float64Array(H * W);
  if (v.view === 'loop1' || v.view === 'loop2') {
    const a = cross(v.view === 'loop1' ? L1 : L2, cy, cx, H, W);
    for (let h = 0; h < H; h++) out[h * W + cx] += a[h];
    for (let w = 0; w < W; w++) out[cy * W + w] += a[H + w];
    return out;
  }
  const a2 = cross(L2, cy, cx, H, W);
  for (let h = 0; h < H; h++) { const wu = a2[h]; if (!wu) continue; const a1 = cross(L1, h, cx, H, W);
    for (let h2 = 0; h2 < H; h2++) out[h2 * W + cx] += wu * a1[h2]; for (let w2 = 0; w2 < W; w2++) out[h * W + w2] += wu * a1[H + w2]; }
  for (let w = 0; w < W; w++) { const wu = a2[H + w]; if (!wu) continue; const a1 = cross(L1, cy, w, H, W);
    for (let h2 = 0; h2 < H; h2++) out[h2 * W + w] += wu * a1[h2]; for (let w2 = 0; w2 < W; w2++) out[cy * W + w2] += wu * a1[H + w2]; }
  return out;
}
function paint(pt) {
  const v = S.v, c = element.querySelector('canvas.av-main');
  if (!v || !c || !S.base) return;
  const t0 = performance.now();
  const ctx = c.getContext('2d');
  ctx.imageSmoothingEnabled = false; ctx.globalAlpha = 1; ctx.drawImage(S.base, 0, 0, c.width, c.height);
  const info = element.querySelector('.av-info');
  if (!pt) { if (info) info.textContent = 'Move the pointer over the image; click to pin or release a query.'; return; }
  const ix = pt[0] / c.width * v.w, iy = pt[1] / c.height * v.h;  // image pixels
  const cx = Math.min(v.fw - 1, Math.floor(ix * v.fw / v.w)), cy = Math.min(v.fh - 1, Math.floor(iy * v.fh / v.h));
  const m = mapAt(v, cy, cx), mh = v.kind === 'regions' ? v.rh : (v.kind === 'affinity' ? v.kh : v.fh), mw = v.kind === 'regions' ? v.rw : (v.kind === 'affinity' ? v.kw : v.fw);
  let lo = Infinity, hi = -Infinity, sum = 0, arg = 0;
  for (let i = 0; i < m.length; i++) { if (m[i] < lo) lo = m[i]; if (m[i] > hi) { hi = m[i]; arg = i; } sum += m[i]; }
  const off = document.createElement('canvas'); off.width = mw; off.height = mh;
  const oc = off.getContext('2d'), im = oc.createImageData(mw, mh);
  for (let i = 0; i < m.length; i++) { const t = hi > lo ? Math.round((m[i] - lo) / (hi - lo) * 255) : 0;
    im.data[4 * i] = v.lut_u8[3 * t]; im.data[4 * i + 1] = v.lut_u8[3 * t + 1]; im.data[4 * i + 2] = v.lut_u8[3 * t + 2]; im.data[4 * i + 3] = 255; }
  oc.putImageData(im, 0, 0);
  ctx.imageSmoothingEnabled = true; ctx.globalAlpha = v.alpha; ctx.drawImage(off, 0, 0, c.width, c.height); ctx.globalAlpha = 1;
  ctx.strokeStyle = '#000'; ctx.lineWidth = 4; ctx.beginPath(); ctx.arc(pt[0], pt[1], 7, 0, 6.3); ctx.stroke();
  ctx.strokeStyle = '#0ff'; ctx.lineWidth = 2; ctx.beginPath(); ctx.arc(pt[0], pt[1], 7, 0, 6.3); ctx.stroke();
  const py = Math.floor(arg / mw), px = arg % mw;
  ctx.strokeStyle = '#50ff78'; ctx.lineWidth = 2; ctx.strokeRect((px + 0.5) / mw * c.width - 5, (py + 0.5) / mh * c.height - 5, 10, 10);
  if (info) info.textContent = `${S.pinned ? 'pinned' : 'hover'} pixel (${ix.toFixed(1)}, ${iy.toFixed(1)}) · cell (${cy}, ${cx}) of ${v.fh}×${v.fw} · ${v.view} · range ${lo.toPrecision(3)}–${hi.toPrecision(3)} · sum ${sum.toFixed(3)} · peak cell (${py}, ${px})`;
  S.frames += 1; S.ms += performance.now() - t0;
  const host = element.closest('.block') || element;  // the component's root (#hover), for tests and benchmarks
  host.dataset.frames = S.frames; host.dataset.ms = S.ms.toFixed(2);
}
let pending = null;
element.addEventListener('mousemove', (ev) => {
  const c = element.querySelector('canvas.av-main');
  if (!c || ev.target !== c || !ready() || S.pinned) return;
  const r = c.getBoundingClientRect();
  pending = [(ev.clientX - r.left) * c.width / r.width, (ev.clientY - r.top) * c.height / r.height];
  requestAnimationFrame(() => { if (pending) { paint(pending); pending = null; } });
});
element.addEventListener('click', (ev) => {
  const c = element.querySelector('canvas.av-main');
  if (!c || ev.target !== c || !ready()) return;
  const r = c.getBoundingClientRect();
  const pt = [(ev.clientX - r.left) * c.width / r.width, (ev.clientY - r.top) * c.height / r.height];
  S.pinned = S.pinned ? null : pt; paint(pt);
});
let lastCanvas = null;  // redraw only when the template re-rendered the canvas (not on our own text updates)
new MutationObserver(() => {
  const c = element.querySelector('canvas.av-main');
  if (c && c !== lastCanvas) { lastCanvas = c; if (ready()) paint(S.pinned); }
}).observe(element, { childList: true, subtree: true });
"""


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.float32).tobytes()).decode()


def _png_data_url(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def component() -> Any:
    """The gr.HTML block that draws hover maps in the browser."""
    import gradio as gr

    return gr.HTML(empty("Analyse an image to explore its attention by hovering."), html_template=TEMPLATE, css_template=CSS, js_on_load=JS,
                   elem_id="hover", apply_default_css=True)


def empty(message: str) -> dict[str, Any]:
    """A payload that only shows a message (no hover for this layer)."""
    return {"id": "", "message": message}


def payload(a: Analysis, layer: str | None, view: str | None, cmap: str = "inferno", alpha: float = 0.6) -> dict[str, Any]:
    """What the browser needs to redraw ``layer``'s map for any query, or a message saying why not."""
    layers = click_layers(a.records)
    if not layers:
        return empty("This model has no click layer.")
    name = layer if layer in layers else list(layers)[-1]
    cl = layers[name]
    view = view if view in cl.views else cl.default_view
    fh, fw = cl.feature_hw
    if fh * fw > MAX_POSITIONS:
        return empty(f"{name} has {fh}×{fw} = {fh * fw} query positions (hover is sent for up to {MAX_POSITIONS}); click the image instead.")
    rec = cl.records[0]
    if cl.overhangs:
        return empty(f"{name}'s positions are blocks of cells whose last ones run past the image's edge; its rows are placed on the server: click the image.")
    if cl.kind == "window":
        return empty(f"{name} is window-local attention: its rows are placed on the server; click the image.")
    if cl.kind == "tokens" and view != "row":
        return empty(f"{name} · {view}: " + ("the class token's map is the same for every pointer position: click the image."
                                             if view == "cls" else "rollout multiplies every layer's matrix, on the server: click the image."))
    data: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"kind": "affinity" if cl.kind == "tokens" else cl.kind, "view": view, "fh": fh, "fw": fw}
    if isinstance(rec, Affinity):
        if rec.rel_h is not None or rec.mask is not None or rec.causal:
            return empty(f"{name} adds relative positions or a mask to its logits; its rows are computed on the server: click the image instead.")
        pq, pk = len(getattr(rec, "query_prefix", ())), len(getattr(rec, "key_prefix", ()))
        meta.update(heads=rec.heads, n=pq + fh * fw, kh=rec.key_hw[0], kw=rec.key_hw[1], m=rec.key_hw[0] * rec.key_hw[1], pq=pq, pk=pk)
        if rec.matrix is not None:
            data["matrix"] = rec.matrix[0].numpy()
            meta.update(matrix=True, d=0, scale=1.0, normalize="softmax")
        else:
            assert rec.queries is not None and rec.keys is not None
            data["q"], data["k"] = rec.queries[0].numpy(), rec.keys[0].numpy()
            meta.update(d=int(rec.queries.shape[-1]), scale=float(rec.scale), normalize=rec.normalize)
    elif isinstance(rec, CrissCross):
        for i, r in enumerate(cl.records[:2], start=1):
            assert isinstance(r, CrissCross)
            if r.attention is not None:
                data[f"a{i}"] = r.attention[0].numpy()
            else:
                assert r.queries is not None and r.keys is not None
                data[f"q{i}"], data[f"k{i}"] = r.queries[0].numpy(), r.keys[0].numpy()
                meta["c"] = int(r.queries.shape[1])
    elif isinstance(rec, RegionAttention):
        data["p"], data["r"] = rec.pixel_weights[0].numpy(), rec.region_maps[0].numpy()
        meta.update(k=rec.regions, rh=int(rec.region_maps.shape[2]), rw=int(rec.region_maps.shape[3]))
    size = sum(v.size * 4 for v in data.values())
    if size > MAX_BYTES:
        return empty(f"{name}'s queries and keys take {size / 2**20:.1f} MB; click the image instead.")
    k = a.display_scale
    ch, cw = a.hw[0] * k, a.hw[1] * k
    s = min(1.0, 768 / max(ch, cw))
    lut = render.lut(cmap)  # (256, 3) uint8
    return {
        "id": secrets.token_hex(6), "message": f"{name} · {view}: maps computed in your browser from the captured float32 tensors "
        f"({size / 1024:.0f} KB sent once).", "image": _png_data_url(a.image), "w": a.hw[1], "h": a.hw[0],
        "cw": int(cw * s), "ch": int(ch * s), "alpha": alpha, "lut": _b64(lut.astype(np.float32)), "lut_u8": lut.reshape(-1).tolist(),
        "bytes": size, "data": {key: _b64(v) for key, v in data.items()}, **meta,
    }
