"""Zoo benchmark: parameters and CPU inference time per image (batch 1, median of 30), 2 threads.

    python bench/zoo.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attnviz.models import ZOO, build


def main() -> None:
    torch.set_num_threads(2)
    x = torch.randn(1, 3, 64, 64)
    print("| model | parameters | CPU ms / image (batch 1) |")
    print("|---|---|---|")
    for name in ZOO:
        m = build(name).eval()
        ts = []
        with torch.inference_mode():
            for i in range(35):
                t = time.perf_counter()
                m(x)
                if i >= 5:
                    ts.append(time.perf_counter() - t)
        print(f"| {name} | {sum(p.numel() for p in m.parameters()) / 1e6:.2f} M | {statistics.median(ts) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
