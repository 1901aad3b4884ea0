"""Shared fixtures: seeded RNG, small inputs."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# mmcv-lite has no compiled ops: `import mmcv.ops` needs a stand-in for mmcv._ext (tests only)
try:
    import mmcv_ext_stub

    mmcv_ext_stub.install()
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def randomize_bn(module: torch.nn.Module) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters (eval-mode checks)."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            if m.affine:
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.3, 0.3)


def free_port() -> int:
    """A TCP port that was free a moment ago (bind to port 0)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def in_threads(work, n: int = 2) -> None:  # type: ignore[no-untyped-def]
    """Run ``work(i)`` for i in range(n), each in its own thread, and wait for all."""
    import threading

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
