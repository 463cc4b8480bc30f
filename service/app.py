"""The FastAPI application. `create_app(settings)` wires settings, logging, metrics, error
handlers and routers; the lifespan loads and warms the model in a worker thread.

Run with `nanoinspect serve`, or `uvicorn --factory service.app:create_app`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from service import errors
from service.deps import require_api_key
from service.inspector import Inspector
from service.observability import Metrics, ObservabilityMiddleware, configure_logging
from service.routes import ops, score, web
from service.settings import Settings
from service.uploads import UploadBudget

try:
    VERSION = version("nanoinspect")
except PackageNotFoundError:  # running from a source tree
    VERSION = "0+unknown"

DESCRIPTION = """Anomaly detection for SEM images of nanofibre mats.

Every error is `{"error": {"code": ..., "message": ...}}` with a 4xx (or 503/504) status.
Masks: a base64 1-bit PNG, or COCO uncompressed RLE in column-major order."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_format, settings.log_level)
    metrics = Metrics()
    inspector = Inspector(settings, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(inspector.load(), name="load-model")
        if settings.fail_on_bad_model:
            await loading  # a bad model aborts startup
        else:  # serve /healthz at once; /readyz says 503 until loaded (or forever if failed)
            loading.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(BaseException):
                await loading
            await inspector.close()
            metrics.close()

    # /docs and /redoc from packaged assets: plants are often offline, the CDN unreachable
    app = FastAPIOffline(
        title="nanoinspect", version=VERSION, description=DESCRIPTION, lifespan=lifespan
    )
    app.state.settings, app.state.inspector = settings, inspector
    app.state.upload_budget = UploadBudget(settings.upload_budget_bytes)
    errors.install(app, lambda code: metrics.errors.labels(code).inc())
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "X-Request-ID", "Content-Type"],
            expose_headers=["X-Request-ID", "X-Score", "X-Is-Anomalous", "X-Regions"],
        )
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    auth = [Depends(require_api_key)]
    app.include_router(ops.router, dependencies=auth)
    app.include_router(score.router, dependencies=auth)
    app.include_router(web.router)
    app.mount("/static", StaticFiles(directory=web.STATIC), name="static")
    return app
