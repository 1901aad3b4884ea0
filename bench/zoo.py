"""Zoo benchmark: parameters and CPU inference time per image (batch 1, median of 30), 2 threads; both zoos.

    python bench/zoo.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attnviz.models import SEG_ZOO, ZOO, build, build_seg


def main() -> None:
    torch.set_num_threads(2)
    print("| model | input | parameters | CPU ms / image (batch 1) |")
    print("|---|---|---|---|")
    for name in [*ZOO, *SEG_ZOO]:
        seg = name in SEG_ZOO
        m = (build_seg(name) if seg else build(name)).eval()
        side = 128 if seg else 64
        x = torch.randn(1, 3, side, side)
        ts = []
        with torch.inference_mode():
            for i in range(35):
                t = time.perf_counter()
                m(x)
                if i >= 5:
                    ts.append(time.perf_counter() - t)
        print(f"| {name} | {side}² | {sum(p.numel() for p in m.parameters()) / 1e6:.2f} M | {statistics.median(ts) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
