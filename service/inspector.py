"""The service's state and its one pipeline: decode (thread pool, bounded) -> micro-batched
inference (one dedicated thread) -> encoding (thread pool). Routes stay thin around it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio

from models.detector import Detector, Result
from models.errors import NanoinspectError
from models.images import Decoded, decode_image
from service.batcher import Batcher, DeadlineExceeded, Overloaded
from service.errors import ApiError
from service.observability import Metrics
from service.schemas import ModelIdentity, ScoreParams
from service.settings import Settings
from service.uploads import Part

log = logging.getLogger(__name__)
RETRY_AFTER = "1"


@dataclass
class Scored:
    """One scored upload and how long each stage took (ms)."""

    part: Part
    decoded: Decoded
    result: Result
    decode_ms: float
    queue_ms: float
    inference_ms: float
    batch_size: int


class Inspector:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self.detector: Detector | None = None
        self.batcher: Batcher | None = None
        self.status, self.detail = "loading", ""
        self._decode_limit = anyio.CapacityLimiter(settings.decode_threads)
        self._settled = asyncio.Event()  # set once loading succeeded or failed

    async def load(self) -> None:
        """Load and warm the model off the event loop; a failure is logged and kept."""
        s = self.settings
        log.info("loading model %s (providers %s)", s.model, ",".join(s.providers))
        try:
            detector = await anyio.to_thread.run_sync(self._load)
        except Exception as e:
            self.status, self.detail = "failed", str(e)
            log.error("model not loaded, /readyz stays 503: %s", e)
            self._settled.set()
            raise
        self.detector = detector
        self.batcher = Batcher(
            detector.score,
            batch_size=s.batch_size,
            batch_wait_s=s.batch_wait_ms / 1000,
            queue_size=s.queue_size,
            observe=self.metrics.observe_batch,
            depth=self.metrics.queue_depth.set,
        )
        self.batcher.start()
        self.status = "ready"
        self.metrics.ready.set(1)
        self._settled.set()
        log.info(
            "model %s ready on %s", detector.name, detector.provider,
            extra={"sha256": detector.sha256, "provider": detector.provider},
        )  # fmt: skip

    def _load(self) -> Detector:
        s = self.settings
        detector = Detector(
            s.model,
            providers=s.providers,
            require_gpu=s.require_gpu,
            threads=s.threads,
            batch_size=s.batch_size,
            tile=s.tile,
        )
        detector.warm_up()
        return detector

    async def close(self) -> None:
        self.metrics.ready.set(0)
        if self.batcher is not None:
            await self.batcher.stop()

    def ready(self) -> Detector:
        if self.detector is None or self.batcher is None:
            message = "the model is still loading" if self.status == "loading" else self.detail
            raise ApiError(503, "not_ready", message, {"Retry-After": "5"})
        return self.detector

    async def wait_ready(self, deadline: float) -> Detector:
        """Like ready(), but a request that arrives while the model loads (a worker that has
        just started, behind a shared port) waits for it, within its deadline."""
        if self.status == "loading":
            left = deadline - asyncio.get_running_loop().time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), max(left, 0))
        return self.ready()

    def identity(self) -> ModelIdentity:
        d = self.ready()
        return ModelIdentity(
            name=d.name, version=d.meta.created, sha256=d.sha256, provider=d.provider
        )

    def admit(self, n: int = 1) -> None:
        """Refuse early, before reading the body, when the queue has no room."""
        assert self.batcher is not None
        if not self.batcher.has_room(n):
            raise _overloaded(f"{self.batcher.waiting} images wait for inference")

    def resolve(self, params: ScoreParams) -> dict[str, Any]:
        """Overrides with the model's defaults filled in: equal settings batch together."""
        m = self.ready().meta
        given = params.overrides()
        out = {
            "alpha": m.alpha,
            "sigma": m.sigma,
            "pixel_threshold": m.pixel_threshold,
            "image_threshold": m.image_threshold,
            "min_area": m.min_area,
        } | {k: v for k, v in given.items() if v is not None}
        if out["sigma"] > m.sigma_max:
            raise ApiError(422, "invalid_parameter", f"sigma: at most {m.sigma_max} for this model")
        return out

    async def score(self, part: Part, params: ScoreParams, deadline: float) -> Scored:
        """Decode and score one upload; every failure is an ApiError."""
        t0 = time.perf_counter()
        decoded = await self.decode(part, params.crop_bottom)
        decode_ms = (time.perf_counter() - t0) * 1000
        resolved = self.resolve(params)
        assert self.batcher is not None
        try:
            job = self.batcher.submit(decoded.pixels, resolved, deadline)
        except Overloaded as e:
            raise _overloaded(str(e)) from None
        left = deadline - asyncio.get_running_loop().time()
        try:
            result = await asyncio.wait_for(job.future, max(left, 0))
        except (TimeoutError, DeadlineExceeded):
            raise ApiError(
                504, "timeout", f"not scored within {self.settings.request_timeout_s} s"
            ) from None
        except Overloaded as e:
            raise _overloaded(str(e)) from None
        except NanoinspectError as e:
            raise ApiError.from_nanoinspect(e) from None
        self.metrics.images.inc()
        self.metrics.anomalous.inc(int(result.is_anomalous))
        self.metrics.regions.inc(len(result.regions))
        queue_ms = (job.started - job.enqueued) * 1000
        return Scored(
            part, decoded, result, decode_ms, queue_ms, job.inference_s * 1000, job.batch_size
        )

    async def decode(self, part: Part, crop_bottom: int) -> Decoded:
        fn = partial(
            decode_image,
            bytes(part.data),
            max_pixels=self.settings.max_pixels,
            crop_bottom=crop_bottom,
            name=part.filename or "file",
        )
        try:
            return await anyio.to_thread.run_sync(fn, limiter=self._decode_limit)
        except NanoinspectError as e:
            raise ApiError.from_nanoinspect(e) from None


def _overloaded(detail: str) -> ApiError:
    return ApiError(
        503, "overloaded", f"server busy ({detail}); retry later", {"Retry-After": RETRY_AFTER}
    )
