"""Numbers in words: shares that keep what rounding would hide."""

from __future__ import annotations


def share_text(v: float) -> str:
    """A share in [0, 1] as a percentage that never rounds a non-zero share to "0%" nor a share short of 1 to "100%":
    ``0.4%``, ``<0.1%``, ``37%``, ``99.6%``, ``>99.9%``."""
    if v <= 0 or v >= 1:
        return f"{v:.0%}"
    if v < 0.001:
        return "<0.1%"
    if v > 0.999:
        return ">99.9%"
    return f"{v:.1%}" if v < 0.01 or v > 0.99 else f"{v:.0%}"
