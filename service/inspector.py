"""The service's state and its one pipeline: decode (thread pool, bounded) -> micro-batched
inference (one dedicated thread) -> encoding (thread pool). Routes stay thin around it.

The model can be swapped while serving (admin route, SIGHUP): the new artifact is loaded
and checked beside the old one, then replaces it in one assignment; requests already
admitted keep the detector they started with, so each answer names the model that made it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from models.detector import Detector, Result
from models.errors import ArtifactError, NanoinspectError
from models.images import Decoded, decode_image
from service.batcher import Batcher, DeadlineExceeded, Overloaded
from service.errors import RETRY_AFTER, ApiError
from service.observability import Metrics
from service.schemas import ModelIdentity, ScoreParams
from service.settings import Settings
from service.uploads import Part

log = logging.getLogger(__name__)


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
    model: ModelIdentity  # the model that scored it


class Inspector:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self.detector: Detector | None = None
        self.batcher: Batcher | None = None
        self.status, self.detail = "loading", ""
        self.loaded_at = ""  # when the serving model was put in service (ISO 8601)
        self._decode_limit = anyio.CapacityLimiter(settings.decode_threads)
        self._decoding = 0  # uploads decoding or waiting for a decode thread
        self._settled = asyncio.Event()  # set once loading succeeded or failed
        self._swap_lock = asyncio.Lock()  # one load at a time
        self._reloads: set[asyncio.Task] = set()

    async def load(self) -> None:
        """Load and warm the configured model off the event loop; a failure is logged and kept."""
        s = self.settings
        log.info("loading model %s (providers %s)", s.model, ",".join(s.providers))
        async with self._swap_lock:
            try:
                detector = await anyio.to_thread.run_sync(self._load, s.model)
            except Exception as e:
                self.status, self.detail = "failed", str(e)
                log.error("model not loaded, /readyz stays 503: %s", e)
                self._settled.set()
                raise
            self._install(detector)
        self._settled.set()

    def _load(self, path: Path) -> Detector:
        """A Detector for `path`, checked: format and metadata (by Detector), then a warm-up
        inference that must give finite numbers. Any failure is an ArtifactError."""
        s = self.settings
        detector = Detector(
            path,
            providers=s.providers,
            require_gpu=s.require_gpu,
            threads=s.threads,
            batch_size=s.batch_size,
            batch_pixels=s.batch_pixels,
            tile=s.tile,
            fixed_size=s.fixed_size,
            trt_cache=s.trt_cache,
        )
        try:
            detector.warm_up()
            probe = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
            (result,) = detector.score([probe])
        except NanoinspectError:
            raise
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ArtifactError(f"{path}: warm-up inference failed ({e})") from None
        if not (np.isfinite(result.score) and np.isfinite(result.score_map).all()):
            raise ArtifactError(f"{path}: warm-up inference gave non-finite scores")
        return detector

    def _install(self, detector: Detector) -> None:
        """Put `detector` in service: one assignment on the event loop, so every request sees
        the old model or the new one, never a mix."""
        s, old = self.settings, self.detector
        if self.batcher is None:
            self.batcher = Batcher(
                batch_wait_s=s.batch_wait_ms / 1000,
                queue_size=s.queue_size,
                idle_release_s=s.idle_release_s,
                observe=self.metrics.observe_batch,
                depth=self.metrics.queue_depth.set,
            )
            self.batcher.start()
        self.detector = detector
        self.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.status, self.detail = "ready", ""
        self.metrics.ready.set(1)
        if old is not None:
            self.metrics.model_info.labels(old.name, old.meta.created, old.sha256).set(0)
        self.metrics.model_info.labels(detector.name, detector.meta.created, detector.sha256).set(1)
        log.info(
            "model %s ready on %s", detector.name, detector.provider,
            extra={"sha256": detector.sha256, "provider": detector.provider},
        )  # fmt: skip

    async def swap(self, path: Path, sha256: str | None = None) -> tuple[Detector | None, float]:
        """Load `path` beside the serving model, check it, then swap; returns the model it
        replaced and the seconds taken. A refused artifact (409) leaves the old one serving."""
        if self._swap_lock.locked():
            raise ApiError(409, "swap_in_progress", "another model load is in progress")
        async with self._swap_lock:
            old = self.detector
            started = time.perf_counter()
            log.info("loading model %s beside the serving one", path)
            try:
                new = await anyio.to_thread.run_sync(self._load, path)
                if sha256 is not None and new.sha256 != sha256.lower():
                    raise ArtifactError(f"{path}: sha256 is {new.sha256}, expected {sha256}")
            except NanoinspectError as e:
                self.metrics.swaps.labels("refused").inc()
                keeps = f"{old.name} ({old.sha256[:12]}) keeps serving" if old else "no model"
                log.error("model swap refused, %s: %s", keeps, e)
                raise ApiError(409, "model_refused", f"{e}; {keeps}") from None
            self._install(new)
            self._settled.set()
            self.metrics.swaps.labels("ok").inc()
            seconds = time.perf_counter() - started
            log.info(
                "model swapped in %.2f s: %s -> %s", seconds, old.sha256 if old else "-",
                new.sha256, extra={"sha256": new.sha256},
            )  # fmt: skip
            return old, seconds

    def reload_soon(self) -> None:
        """SIGHUP: reload the configured model path in the background (errors are logged)."""

        async def reload() -> None:
            try:
                await self.swap(self.settings.model)
            except ApiError as e:  # a refused model is logged by swap()
                if e.code == "swap_in_progress":
                    log.warning("SIGHUP ignored: %s", e.message)

        task = asyncio.get_running_loop().create_task(reload(), name="reload-model")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

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

    def identity(self, detector: Detector | None = None) -> ModelIdentity:
        d = detector or self.ready()
        return ModelIdentity(
            name=d.name, version=d.meta.created, sha256=d.sha256, provider=d.provider
        )

    def admit(self, n: int = 1) -> None:
        """Refuse early, before reading the body, when the queue has no room."""
        assert self.batcher is not None
        if not self.batcher.has_room(n):
            raise _overloaded(f"{self.batcher.waiting} images wait for inference")

    def resolve(self, params: ScoreParams, detector: Detector) -> dict[str, Any]:
        """Overrides with the model's alpha, sigma and min_area filled in, so equal settings
        batch together; thresholds not given stay None: the Detector picks those calibrated
        for the alpha and sigma, or says they were not (Detector.thresholds)."""
        m = detector.meta
        given = params.overrides()
        out = {"alpha": m.alpha, "sigma": m.sigma, "min_area": m.min_area} | {
            k: v for k, v in given.items() if v is not None or k.endswith("_threshold")
        }
        if out["sigma"] > m.sigma_max:
            raise ApiError(422, "invalid_parameter", f"sigma: at most {m.sigma_max} for this model")
        return out

    async def score(self, part: Part, params: ScoreParams, deadline: float) -> Scored:
        """Decode and score one upload; every failure is an ApiError."""
        detector = self.ready()  # this request's model, even if another is swapped in meanwhile
        t0 = time.perf_counter()
        bits = detector.meta.sample_bits  # untagged 16-bit data: read as the model was trained
        crop = detector.meta.crop_bottom if params.crop_bottom is None else params.crop_bottom
        decoded = await self.decode(part, crop, deadline, bits)
        decode_ms = (time.perf_counter() - t0) * 1000
        resolved = self.resolve(params, detector)
        assert self.batcher is not None
        try:
            job = self.batcher.submit(detector, decoded.pixels, resolved, deadline)
        except Overloaded as e:
            raise _overloaded(str(e)) from None
        left = deadline - asyncio.get_running_loop().time()
        try:
            result = await asyncio.wait_for(job.future, max(left, 0))
        except (TimeoutError, DeadlineExceeded):
            raise _timeout(self.settings.request_timeout_s) from None
        except Overloaded as e:
            raise _overloaded(str(e)) from None
        except NanoinspectError as e:
            raise ApiError.from_nanoinspect(e) from None
        except Exception as e:  # the runtime failed on this image alone (the batcher retried)
            log.error("scoring %s failed", part.filename or "an upload", exc_info=e)
            raise ApiError(500, "scoring_failed", f"scoring failed: {type(e).__name__}") from None
        self.metrics.images.inc()
        self.metrics.anomalous.inc(int(result.is_anomalous))
        self.metrics.out_of_distribution.inc(int(result.out_of_distribution is not None))
        self.metrics.regions.inc(len(result.regions))
        self.metrics.model_images.labels(detector.sha256).inc()
        queue_ms = (job.started - job.enqueued) * 1000
        return Scored(
            part, decoded, result, decode_ms, queue_ms, job.inference_s * 1000, job.batch_size,
            self.identity(detector),
        )  # fmt: skip

    async def decode(
        self, part: Part, crop_bottom: float, deadline: float, sample_bits: int = 16
    ) -> Decoded:
        """Decode in the bounded thread pool. Uploads waiting for a thread are bounded too
        (queue_size: beyond, 503) and by their deadline (504), so a busy pool never hangs."""
        if self._decoding >= self.settings.queue_size:
            raise _overloaded(f"{self._decoding} uploads wait for decoding")
        fn = partial(
            decode_image,
            bytes(part.data),
            max_pixels=self.settings.max_pixels,
            crop_bottom=crop_bottom,
            name=part.filename or "file",
            sample_bits=sample_bits,
        )
        self._decoding += 1
        try:
            with anyio.fail_after(max(deadline - asyncio.get_running_loop().time(), 0)):
                return await anyio.to_thread.run_sync(fn, limiter=self._decode_limit)
        except TimeoutError:
            raise _timeout(self.settings.request_timeout_s) from None
        except NanoinspectError as e:
            raise ApiError.from_nanoinspect(e) from None
        finally:
            self._decoding -= 1


def _timeout(seconds: float) -> ApiError:
    return ApiError(504, "timeout", f"not scored within {seconds} s")


def _overloaded(detail: str) -> ApiError:
    return ApiError(
        503, "overloaded", f"server busy ({detail}); retry later", {"Retry-After": RETRY_AFTER}
    )
