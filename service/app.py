"""The FastAPI application. `create_app(settings)` wires settings, logging, metrics, error
handlers and routers; the lifespan loads and warms the model in a worker thread.

Served by `nanoinspect serve` (service.server.run, with the connection protections); started
by another server from its import string, it refuses (service.server.check_started_by_run).
Code that embeds the app passes its Settings and answers for the server itself."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from service import errors, heap
from service.deps import require_admin_key, require_api_key
from service.inspector import Inspector
from service.observability import Metrics, ObservabilityMiddleware, configure_logging
from service.openapi import adjust_schema
from service.routes import admin, ops, score, web
from service.security import RateLimiter, SecurityHeadersMiddleware
from service.server import check_started_by_run
from service.settings import Settings
from service.uploads import UploadBudget

try:
    VERSION = version("nanoinspect")
except PackageNotFoundError:  # running from a source tree
    VERSION = "0+unknown"

DESCRIPTION = """Anomaly detection for SEM images of nanofibre mats.

Every error is `{"error": {"code": ..., "message": ...}}` with a 4xx (or 503/504) status.
Masks: a base64 1-bit PNG, or COCO uncompressed RLE in column-major order."""
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for `settings`; without them (a server's import string) only under run()."""
    if settings is None:
        check_started_by_run()
        settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    metrics = Metrics()
    inspector = Inspector(settings, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        heap.fix_thresholds()  # before the model and the first burst: see service.heap
        loading = asyncio.create_task(inspector.load(), name="load-model")
        if settings.fail_on_bad_model:
            await loading  # a bad model aborts startup
        else:  # serve /healthz at once; /readyz says 503 until loaded (or forever if failed)
            loading.add_done_callback(lambda t: t.cancelled() or t.exception())
        loop = asyncio.get_running_loop()
        hup = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not main thread
            loop.add_signal_handler(signal.SIGHUP, inspector.reload_soon)  # reload MODEL
            hup = True
        try:
            yield
        finally:
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            loading.cancel()
            with contextlib.suppress(BaseException):
                await loading
            await inspector.close()
            metrics.close()

    about = {"title": "nanoinspect", "version": VERSION, "description": DESCRIPTION}
    if settings.docs:  # /docs and /redoc from packaged assets: the CDN may be unreachable
        app = FastAPIOffline(**about, lifespan=lifespan)
    else:
        app = FastAPI(**about, lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.settings, app.state.inspector = settings, inspector
    app.state.upload_budget = UploadBudget(settings.upload_budget_bytes)
    app.state.rate_limiter = (
        RateLimiter(settings.rate_limit, settings.rate_burst) if settings.rate_limit else None
    )
    errors.install(app, lambda code: metrics.errors.labels(code).inc())
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "X-Request-ID", "Content-Type"],
            expose_headers=[
                "X-Request-ID", "X-Score", "X-Is-Anomalous", "X-Regions", "X-Model-Sha256"
            ],
        )  # fmt: skip
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeadersMiddleware, docs_paths=DOCS_PATHS)
    auth = [Depends(require_api_key)]
    app.include_router(ops.router, dependencies=auth)
    app.include_router(score.router, dependencies=auth)
    app.include_router(admin.router, dependencies=[Depends(require_admin_key)])
    app.include_router(web.router)
    app.mount("/static", StaticFiles(directory=web.STATIC), name="static")
    adjust_schema(app, settings)
    return app
