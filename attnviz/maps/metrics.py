"""Faithfulness scores of maps against ground-truth boxes (pointing game, mass ratio, ...)."""

from __future__ import annotations

import torch


def box_mask(boxes: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Boolean ``(N, H, W)`` masks of boxes (x0, y0, x1, y1), x1/y1 exclusive, in pixels."""
    h, w = hw
    ys = torch.arange(h)[None, :, None]
    xs = torch.arange(w)[None, None, :]
    b = boxes[:, :, None, None]
    return (xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])


def pointing(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Pointing game: is each map's argmax inside its box? ``maps (N, H, W)`` at image size → ``(N,)``."""
    n, h, w = maps.shape
    idx = maps.flatten(1).argmax(1)
    inside = box_mask(boxes, (h, w)).flatten(1)
    return inside[torch.arange(n), idx]


def mass_ratio(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(map mass inside the box / total mass) ÷ (box area / image area), per map ``(N,)``; 1 = chance."""
    m = maps.clamp_min(0).flatten(1)
    inside = box_mask(boxes, tuple(maps.shape[1:])).flatten(1).float()
    frac_mass = (m * inside).sum(1) / m.sum(1).clamp_min(1e-12)
    frac_area = inside.mean(1).clamp_min(1e-12)
    return frac_mass / frac_area


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence (natural log, in [0, ln 2]) between rows of ``p`` and ``q`` ``(N, K)``."""
    p = p.clamp_min(0) / p.clamp_min(0).sum(-1, keepdim=True).clamp_min(1e-12)
    q = q.clamp_min(0) / q.clamp_min(0).sum(-1, keepdim=True).clamp_min(1e-12)
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * (a.clamp_min(1e-12).log() - b.clamp_min(1e-12).log())).sum(-1)

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def quad_iou(quads: torch.Tensor, boxes: torch.Tensor, hw: tuple[int, int], supersample: int = 4) -> torch.Tensor:
    """IoU of convex quadrilaterals ``(N, 4, 2)`` (pixel x, y, in order) with boxes, by rasterisation."""
    h, w = hw
    s = supersample
    ys = (torch.arange(h * s) + 0.5) / s
    xs = (torch.arange(w * s) + 0.5) / s
    py, px = torch.meshgrid(ys, xs, indexing="ij")  # (Hs, Ws)
    pts = torch.stack([px, py], -1).view(1, 1, -1, 2)  # (1, 1, P, 2)
    a = quads.float()[:, :, None, :]  # (N, 4, 1, 2)
    b = quads.float().roll(-1, dims=1)[:, :, None, :]
    cross = (b[..., 0] - a[..., 0]) * (pts[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (pts[..., 0] - a[..., 0])  # (N, 4, P)
    inside_q = (cross >= 0).all(1) | (cross <= 0).all(1)  # (N, P)
    bx = boxes.float()
    px, py = pts[0, 0, :, 0][None], pts[0, 0, :, 1][None]
    inside_b = (px >= bx[:, :1]) & (px < bx[:, 2:3]) & (py >= bx[:, 1:2]) & (py < bx[:, 3:4])
    inter = (inside_q & inside_b).sum(1).float()
    union = (inside_q | inside_b).sum(1).float().clamp_min(1)
    return inter / union


def nearest_centroid_accuracy(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Class selectivity: centroids from the first half, nearest-centroid accuracy on the second half."""
    n = features.shape[0] // 2
    f = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cents = torch.stack([f[:n][labels[:n] == c].mean(0) if (labels[:n] == c).any() else torch.zeros(f.shape[1]) for c in range(num_classes)])
    pred = torch.cdist(f[n:], cents).argmin(1)
    return float((pred == labels[n:]).float().mean())


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation between two maps of the same shape (average ranks for ties)."""
    from scipy.stats import spearmanr

    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    av, bv = a.flatten().double().numpy(), b.flatten().double().numpy()
    if av.std() == 0 or bv.std() == 0:
        return float("nan")
    return float(spearmanr(av, bv).statistic)


def topk_iou(a: torch.Tensor, b: torch.Tensor, frac: float = 0.1) -> float:
    """IoU of the top ``frac`` pixels of two maps of the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    k = max(1, int(round(a.numel() * frac)))
    ia = torch.zeros(a.numel(), dtype=torch.bool)
    ib = torch.zeros(b.numel(), dtype=torch.bool)
    ia[a.flatten().topk(k).indices] = True
    ib[b.flatten().topk(k).indices] = True
    return float((ia & ib).sum() / (ia | ib).sum())


def same_class_mass(maps: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Share of each map's mass on pixels of a class, ÷ that class's share of the image; 1 = chance.

    Args:
        maps: ``(N, H, W)`` non-negative maps at label resolution.
        labels: ``(N, H, W)`` label maps.
        classes: ``(N,)`` the class of each map's query.

    Returns:
        ``(N,)`` ratios (NaN where the class has no pixel).
    """
    m = maps.clamp_min(0).flatten(1)
    same = (labels.flatten(1) == classes[:, None]).float()
    frac_mass = (m * same).sum(1) / m.sum(1).clamp_min(1e-12)
    area = same.mean(1)
    return torch.where(area > 0, frac_mass / area.clamp_min(1e-12), torch.full_like(area, float("nan")))


def query_dependence(rows_a: torch.Tensor, rows_b: torch.Tensor) -> dict[str, float]:
    """How much a layer's attention depends on the query (GCNet's question), from pairs of rows.

    Args:
        rows_a, rows_b: ``(N, K)`` rows of N random query pairs (same image per pair).

    Returns:
        ``{"js": mean Jensen–Shannon divergence (nats, 0 … ln 2), "same_peak": share of pairs whose rows
        peak at the same key}``. Near 0 and near 1 mean one global context for every pixel.
    """
    js = js_divergence(rows_a, rows_b)
    same = (rows_a.argmax(1) == rows_b.argmax(1)).float()
    return {"js": float(js.mean()), "same_peak": float(same.mean())}


def top_share(m: torch.Tensor, frac: float = 0.05) -> float:
    """Share of a non-negative map's mass held by its top ``frac`` of positions (concentration)."""
    v = m.clamp_min(0).flatten()
    k = max(1, int(round(v.numel() * frac)))
    total = float(v.sum())
    return float(v.topk(k).values.sum()) / total if total > 0 else float("nan")
