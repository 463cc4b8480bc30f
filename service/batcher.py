"""Micro-batching: requests wait in a bounded queue; one collector task groups jobs that can
share an inference call (same image size and scoring settings) up to what the model takes
in one call (`Detector.per_call`: a count and a pixel budget) or `batch_wait`, and runs
`Detector.score` in ONE dedicated thread, so the event loop never runs inference and the
model never runs twice at once. A batch that fails is retried image by image, so one bad
image fails only its own request. After `idle_release_s` without work, the models that ran
give their arena's free memory back (`Detector.trim`) and so does the C heap
(`service.heap.release`: decoded images and results freed by other threads), so a burst's
peak is not kept.

Each job carries the model it was submitted for (its defaults resolved its settings), and a
batch holds jobs of one model only: after a model swap, jobs already queued finish on the old
model while new ones go to the new; the old one is freed when its last job is done."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from models.detector import score_isolated
from service import heap

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue is full: the caller should answer 503 with Retry-After."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before its image was scored."""


class Model(Protocol):
    def score(self, images: list[np.ndarray], **params: Any) -> list: ...

    def per_call(self, shape: tuple[int, int]) -> int: ...

    def trim(self) -> None: ...


@dataclass(eq=False)
class Pending:
    model: Model  # scores this job (and answers for it)
    image: np.ndarray  # float32 (H, W) in [0, 1]
    params: dict[str, Any]  # keyword arguments of Detector.score, all resolved
    deadline: float  # loop time
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0  # when its batch began inference
    inference_s: float = 0.0  # the batch's inference time
    batch_size: int = 0

    @property
    def key(self) -> Hashable:
        return (id(self.model), self.image.shape, tuple(sorted(self.params.items())))


class Batcher:
    """Runs job.model.score(images, **params) in batches; observe(size, seconds) is told of
    every batch and depth(n) of every queue change (for metrics)."""

    def __init__(
        self,
        *,
        batch_wait_s: float,
        queue_size: int,
        idle_release_s: float,
        observe: Callable[[int, float], None] = lambda n, s: None,
        depth: Callable[[int], None] = lambda n: None,
    ):
        self._observe, self._depth = observe, depth
        self.batch_wait_s, self.queue_size = batch_wait_s, queue_size
        self.idle_release_s = idle_release_s
        self._ran: weakref.WeakSet[Model] = weakref.WeakSet()  # since the last release
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._held: deque[Pending] = deque()  # taken from the queue but not in this batch's group
        self._waiting = 0  # jobs submitted and not yet running: what queue_size bounds
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="nanoinspect-infer")
        self._task: asyncio.Task | None = None

    @property
    def waiting(self) -> int:
        return self._waiting

    def has_room(self, n: int = 1) -> bool:
        return self._waiting + n <= self.queue_size

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in [*self._held, *_drain(self._queue)]:
            if not job.future.done():
                job.future.set_exception(Overloaded("the server is shutting down"))
        self._executor.shutdown(wait=True)

    def submit(
        self, model: Model, image: np.ndarray, params: dict[str, Any], deadline: float
    ) -> Pending:
        """Queue one image for `model`; raises Overloaded when queue_size images already wait."""
        if not self.has_room():
            raise Overloaded(f"{self._waiting} images already wait (queue_size {self.queue_size})")
        loop = asyncio.get_running_loop()
        job = Pending(model, image, params, deadline, loop.create_future())
        self._queue.put_nowait(job)
        self._set_waiting(+1)
        return job

    def _set_waiting(self, delta: int) -> None:
        self._waiting += delta
        self._depth(self._waiting)

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            try:
                await self._infer(batch)
            except Exception:  # never let one bad batch stop the service
                log.exception("batch of %d failed", len(batch))
            # its results' maps are onnxruntime's outputs, not copies: kept while the next job
            # is awaited, they would pin their arena region through the idle release
            del batch

    async def _next(self) -> Pending:
        """The next queued job; if none comes within idle_release_s, the models that ran
        since the last release first give their free memory back."""
        if self._ran:
            try:
                return await asyncio.wait_for(self._queue.get(), self.idle_release_s)
            except TimeoutError:
                ran, self._ran = list(self._ran), weakref.WeakSet()
                try:
                    await asyncio.get_running_loop().run_in_executor(self._executor, _release, ran)
                except Exception:  # memory stays held; scoring is unaffected
                    log.exception("releasing the models' free memory failed")
        return await self._queue.get()

    async def _collect(self) -> list[Pending]:
        """Wait for a first job, then gather jobs with its key until its model's per-call
        limit or batch_wait."""
        first = self._held.popleft() if self._held else await self._next()
        limit = first.model.per_call(first.image.shape)
        batch = [first]
        for job in list(self._held):
            if len(batch) < limit and job.key == first.key:
                self._held.remove(job)
                batch.append(job)
        loop = asyncio.get_running_loop()
        until = loop.time() + self.batch_wait_s
        while len(batch) < limit and (left := until - loop.time()) > 0:
            try:
                job = await asyncio.wait_for(self._queue.get(), left)
            except TimeoutError:
                break
            (batch if job.key == first.key else self._held).append(job)
        return batch

    async def _infer(self, batch: list[Pending]) -> None:
        self._set_waiting(-len(batch))
        now = asyncio.get_running_loop().time()
        live = []
        for job in batch:
            if job.future.done():  # the caller gave up (deadline, disconnect)
                continue
            if now > job.deadline:
                job.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                continue
            live.append(job)
        if not live:
            return
        started = time.perf_counter()
        images = [job.image for job in live]
        model, params = live[0].model, live[0].params  # the same for the whole batch
        self._ran.add(model)
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(
            self._executor,
            lambda: score_isolated(lambda batch: model.score(batch, **params), images),
        )
        seconds = time.perf_counter() - started
        self._observe(len(live), seconds)
        for job, result in zip(live, results, strict=True):
            job.started, job.inference_s, job.batch_size = started, seconds, len(live)
            if job.future.done():
                continue
            if isinstance(result, Exception):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)


def _release(models: list[Model]) -> None:
    for model in models:
        model.trim()
    heap.release()


def _drain(queue: asyncio.Queue[Pending]) -> list[Pending]:
    jobs = []
    while not queue.empty():
        jobs.append(queue.get_nowait())
    return jobs
