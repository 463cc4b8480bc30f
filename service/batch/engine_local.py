"""The local engine: a pool of decoders (threads, or processes) runs ahead of inference,
decoded images wait in per-size buckets until a batch is full, and outputs are written by
a thread pool while the next batch is scored. onnxruntime and Pillow release the GIL, so
threads overlap decoding, inference and PNG encoding on all cores."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TYPE_CHECKING

from service.batch.inputs import Item
from service.batch.job import Job
from service.batch.rows import Loaded, error_row, finish, load, score_group

if TYPE_CHECKING:
    from models.detector import Detector


def _decoders(kind: str, workers: int) -> Executor:
    if kind == "processes":  # forkserver: never fork a parent that runs onnxruntime threads
        return ProcessPoolExecutor(workers, mp_context=mp.get_context("forkserver"))
    return ThreadPoolExecutor(workers, thread_name_prefix="decode")


def _now(value: dict) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


def local_rows(
    job: Job, todo: list[Item], detector: Detector, crop: float | int
) -> Iterator[list[dict]]:
    """Rows of `todo`, yielded as their outputs are complete (not in input order)."""
    workers = job.workers or min(4, os.cpu_count() or 1)
    decoders, savers = _decoders(job.decoder, workers), ThreadPoolExecutor(workers, "save")
    ahead = 2 * workers + 2 * job.batch_size  # images decoded or in flight: bounds memory
    feed = iter(todo)
    decoding: deque[tuple[Item, Future]] = deque()
    buckets: dict[tuple[int, ...], list[tuple[Item, Loaded]]] = {}
    saving: deque[Future] = deque()
    sha, bits = detector.sha256, detector.meta.sample_bits

    def top_up() -> None:
        while len(decoding) < ahead and (item := next(feed, None)) is not None:
            decoding.append((item, decoders.submit(load, item.path, crop, bits)))

    def score(shape: tuple[int, ...]) -> None:
        bucket = buckets.pop(shape)
        results, ms = score_group(detector, [x.pixels for _, x in bucket], job.params())
        for (item, x), r in zip(bucket, results, strict=True):
            if isinstance(r, str):
                saving.append(
                    _now(error_row(item, f"{item.path}: {r}", "scoring_failed", sha, x.ms))
                )
                continue
            timings = {"decode_ms": x.ms, "infer_ms": ms}
            args = (job.out, job.kinds, item, x.pixels, r, sha, timings, x.notes)
            saving.append(savers.submit(finish, *args) if job.kinds else _now(finish(*args)))

    def ready(drain: bool) -> list[dict]:
        rows = []
        while saving and (drain or saving[0].done() or len(saving) > ahead):
            rows.append(saving.popleft().result())
        return rows

    try:
        top_up()
        while decoding:
            item, future = decoding.popleft()
            top_up()
            x: Loaded = future.result()
            if x.pixels is None:
                yield [error_row(item, x.error or "decoding failed", x.code, sha, x.ms)]
                continue
            bucket = buckets.setdefault(x.pixels.shape, [])
            bucket.append((item, x))
            if len(bucket) >= job.batch_size:
                score(x.pixels.shape)
            elif sum(map(len, buckets.values())) >= ahead:  # many sizes: flush the fullest
                score(max(buckets, key=lambda k: len(buckets[k])))
            if rows := ready(drain=False):
                yield rows
        for shape in list(buckets):
            score(shape)
        if rows := ready(drain=True):
            yield rows
    finally:
        decoders.shutdown(wait=True, cancel_futures=True)
        savers.shutdown(wait=True)
