"""Metrics, logs and request ids. Prometheus metrics live in a registry per app (so tests can
build many apps), or in PROMETHEUS_MULTIPROC_DIR when several workers share one port; logs
are one JSON object per line carrying the request id that X-Request-ID echoes."""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from contextvars import ContextVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from pythonjsonlogger import json as jsonlogger
from pythonjsonlogger.core import RESERVED_ATTRS
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="")
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
log = logging.getLogger("service.access")


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        reg = None if self.multiprocess else self.registry  # multiprocess: values go to files
        p = "nanoinspect_"
        self.requests = Counter(
            p + "requests_total", "HTTP requests", ["route", "method", "status"], registry=reg
        )
        self.latency = Histogram(
            p + "request_duration_seconds", "HTTP request latency",
            ["route", "method", "status"], buckets=_LATENCY, registry=reg,
        )  # fmt: skip
        self.inference = Histogram(
            p + "inference_seconds", "Detector.score time per batch", buckets=_LATENCY,
            registry=reg,
        )  # fmt: skip
        self.batch_size = Histogram(
            p + "batch_size", "images per inference call", buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=reg,
        )  # fmt: skip
        self.queue_depth = Gauge(
            p + "queue_depth", "images waiting for inference", multiprocess_mode="livesum",
            registry=reg,
        )  # fmt: skip
        self.images = Counter(p + "images_scored_total", "images scored", registry=reg)
        self.anomalous = Counter(
            p + "anomalous_images_total", "images judged anomalous", registry=reg
        )
        self.out_of_distribution = Counter(
            p + "out_of_distribution_total",
            "images unlike the training images (blank, saturated, defocused...): anomalous",
            registry=reg,
        )
        self.regions = Counter(p + "regions_found_total", "anomalous regions found", registry=reg)
        self.errors = Counter(p + "errors_total", "error responses by code", ["code"], registry=reg)
        self.ready = Gauge(
            p + "ready", "1 when the model is loaded and warm", multiprocess_mode="livemin",
            registry=reg,
        )  # fmt: skip
        self.model_info = Gauge(
            p + "model_info", "1 for the model serving now, 0 for ones it replaced",
            ["name", "version", "sha256"], multiprocess_mode="liveall", registry=reg,
        )  # fmt: skip
        self.model_images = Counter(
            p + "model_images_total", "images scored, by the model that scored them", ["sha256"],
            registry=reg,
        )  # fmt: skip
        self.swaps = Counter(
            p + "model_swaps_total", "model loads while serving, by result (ok, refused)",
            ["result"], registry=reg,
        )  # fmt: skip

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def close(self) -> None:
        """A stopping worker's live gauges must leave the shared multiprocess totals."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())

    def exposition(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)


class ObservabilityMiddleware:
    """Pure ASGI: sets the request id, echoes it, counts and times every request by route
    template and status, writes one access log line, and turns a crash into a JSON 500."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        rid = incoming if _SAFE_ID.fullmatch(incoming) else uuid.uuid4().hex
        token = REQUEST_ID.set(rid)
        start, status, started = time.perf_counter(), 500, False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not started:
                response = error_response(500, "internal", f"internal error (request {rid})")
                await response(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            seconds = time.perf_counter() - start
            self.metrics.requests.labels(label, scope["method"], str(status)).inc()
            self.metrics.latency.labels(label, scope["method"], str(status)).observe(seconds)
            log.info(
                "%s %s %d %.1f ms", scope["method"], scope["path"], status, seconds * 1000,
                extra={"status": status, "route": label, "ms": round(seconds * 1000, 2)},
            )  # fmt: skip
            REQUEST_ID.reset(token)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = REQUEST_ID.get() or "-"
        return True


class JsonFormatter(jsonlogger.JsonFormatter):
    """python-json-logger with this service's field names: ts (local, ms), level (lower
    case), logger, msg, every `extra` field, exc; uvicorn's ANSI copy of msg left out."""

    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03d"

    def __init__(self) -> None:
        super().__init__(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={
                "asctime": "ts", "levelname": "level", "name": "logger", "message": "msg",
                "exc_info": "exc",
            },
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        )  # fmt: skip

    def add_fields(self, log_data: dict, record: logging.LogRecord, message_dict: dict) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data["level"] = log_data["level"].lower()


def configure_logging(fmt: str = "json", level: str = "info") -> None:
    """One stderr handler on the root logger (replacing only our own earlier one); uvicorn's
    loggers propagate to it when uvicorn runs with log_config=None."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_nanoinspect", False)]:
        root.removeHandler(h)
    handler = logging.StreamHandler()
    handler._nanoinspect = True  # type: ignore[attr-defined]
    handler.addFilter(_RequestIdFilter())
    text = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(text))
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("uvicorn.access").disabled = True  # the middleware logs requests
