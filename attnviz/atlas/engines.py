"""Engines that run the per-batch function over a run's shards: ``local`` (this process, decoding in worker
processes) and ``ray`` (Ray Data: a list of shards → ``map_batches`` with an actor class that holds the model).

Both call :func:`run_shard`, which decodes one shard, runs :func:`~attnviz.atlas.compute.process_batch` on it and
writes its partial tables; a shard is finished once its ``done`` marker exists (written last), which is what
``--resume`` looks for.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .aggregate import TABLES, shard_path
from .compute import BatchContext, process_batch
from .data import Decoded, Item, decode_files, decode_scenes

Progress = Callable[[int, int], None]  # (images done, images in the run)


@dataclass
class Plan:
    """The shards of a run and how to decode them (picklable: it travels to worker processes and Ray actors)."""

    shards: list[list[Item]]
    card: dict[str, Any]
    scenes: dict[str, Any] | None = None
    decoder: Callable[[list[Item], int], Decoded] | None = None

    def decode(self, index: int) -> Decoded:
        items = self.shards[index]
        if self.decoder is not None:
            return self.decoder(items, index)
        return decode_scenes(items, index, self.scenes, self.card) if self.scenes else decode_files(items, self.card)


def done_shards(out: Path, n: int) -> set[int]:
    """Shards of a run whose results are complete."""
    return {i for i in range(n) if shard_path(out, i, "done").is_file()}


def write_shard(out: Path, index: int, tables: dict[str, Any], decoded: Decoded, seconds: float) -> int:
    """Store one shard's partial tables, then its ``done`` marker (atomically, last)."""
    for name in TABLES:
        p = shard_path(out, index, name)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tables[name].to_parquet(tmp, index=False)
        os.replace(tmp, p)
    marker = shard_path(out, index, "done")
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"images": len(decoded.paths), "skipped": decoded.skipped, "seconds": round(seconds, 4)}))
    os.replace(tmp, marker)
    return len(decoded.paths)


def run_shard(model: nn.Module, plan: Plan, index: int, ctx: BatchContext, out: Path, decoded: Decoded | None = None) -> int:
    """Decode (unless given), process and store shard ``index``; returns its number of images."""
    t0 = time.perf_counter()
    decoded = decoded if decoded is not None else plan.decode(index)
    tables = process_batch(model, decoded, ctx)
    return write_shard(out, index, tables, decoded, time.perf_counter() - t0)


class _Shards(Dataset):
    def __init__(self, plan: Plan, todo: list[int]) -> None:
        self.plan, self.todo = plan, todo

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int) -> tuple[int, Decoded]:
        return self.todo[k], self.plan.decode(self.todo[k])


def _as_is(x: Any) -> Any:
    return x


def run_local(model: nn.Module, plan: Plan, todo: list[int], ctx: BatchContext, out: Path, workers: int, progress: Progress | None) -> None:
    """This process runs the model; ``workers`` processes decode the next shards meanwhile (0: decode here)."""
    loader = DataLoader(_Shards(plan, todo), batch_size=None, num_workers=workers, collate_fn=_as_is, prefetch_factor=2 if workers else None)
    total = sum(len(plan.shards[i]) for i in todo)
    done = 0
    for index, decoded in loader:
        run_shard(model, plan, index, ctx, out, decoded)
        done += len(plan.shards[index])
        if progress:
            progress(done, total)


class ShardActor:
    """A Ray actor: holds the model (built once per actor) and runs whole shards."""

    def __init__(self, model: nn.Module, plan: Plan, ctx: dict[str, Any], out: str) -> None:
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.model, self.plan, self.ctx, self.out = model.to(ctx["device"]).eval(), plan, BatchContext(**ctx), Path(out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shards = [int(i) for i in batch["shard"]]
        images = [run_shard(self.model, self.plan, i, self.ctx, self.out) for i in shards]
        return {"shard": np.array(shards), "images": np.array(images)}


def _ray_rows(model: nn.Module, plan: Plan, todo: list[int], ctx: BatchContext, out: Path, workers: int) -> Iterator[dict[str, Any]]:
    import ray  # noqa: PLC0415

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # our own progress bar reports; Ray's would interleave with it
    ray.data.DataContext.get_current().enable_progress_bars = False
    gpu = 1 if ctx.device.startswith("cuda") else 0
    ds = ray.data.from_items([{"shard": i} for i in todo], override_num_blocks=max(1, min(len(todo), 4 * workers)))
    ds = ds.map_batches(ShardActor, fn_constructor_kwargs={"model": model.cpu(), "plan": plan, "ctx": asdict(ctx), "out": str(out)},
                        batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), num_gpus=gpu, num_cpus=1)
    yield from ds.iter_rows()


def run_ray(model: nn.Module, plan: Plan, todo: list[int], ctx: BatchContext, out: Path, workers: int, address: str | None,
            progress: Progress | None) -> None:
    """Ray Data over the shards: ``workers`` actors (one GPU each on a GPU cluster). Without ``address`` Ray starts on this
    machine; with it, it joins that cluster (every node must see ``out`` and the data at the same paths)."""
    try:
        import ray  # noqa: PLC0415
    except ImportError:
        raise RuntimeError("the ray engine needs Ray Data: pip install 'attnviz[ray]' (or 'ray[data]')") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=None if address else max(workers, 1), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    total = sum(len(plan.shards[i]) for i in todo)
    done = 0
    try:
        for row in _ray_rows(model, plan, todo, ctx, out, workers):
            done += len(plan.shards[int(row["shard"])])
            if progress:
                progress(done, total)
    finally:
        if started:
            ray.shutdown()
