"""The one way the HTTP server starts: uvicorn with the connection protections an ASGI app
cannot set for itself, since they act before a request reaches it (a bound and a deadline
for request heads, JSON framing errors, keep-alive, the drain on SIGTERM, no Server header).

`nanoinspect serve` and the Docker image call `run`. The app factory, started from its
import string by any other server (`uvicorn --factory service.app:create_app`), refuses to
start rather than serve without them (`check_started_by_run`).

uvicorn has no public setting for a request-head deadline (encode/uvicorn#157, its
`--timeout-request-start`, was never built), so `service.protocol` subclasses uvicorn's h11
protocol and is passed through uvicorn's public `http=` setting."""

from __future__ import annotations

import os
import shutil
import tempfile

from models.errors import NanoinspectError

FACTORY = "service.app:create_app"
MAX_HEADER_BYTES = 32 << 10  # request line and headers; browsers send 1-8 KiB
DRAIN_S = 30  # on SIGTERM, in-flight requests get this long to finish
STARTED_BY_RUN = "NANOINSPECT_STARTED_BY_RUN"  # set for the server and its workers

PROTECTIONS = {
    # h11, not httptools: httptools buffers request headers without limit (a 1 GB header
    # line costs 1 GB); h11 answers 400 past this many bytes of headers, and our subclass
    # adds the header deadline and JSON errors
    "http": "service.protocol:H11Protocol",
    "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    "timeout_keep_alive": 5,
    "timeout_graceful_shutdown": DRAIN_S,
    "server_header": False,
    "access_log": False,  # the app logs every request itself (service.observability)
    "log_config": None,  # and configures logging from its settings
}


def run(host: str, port: int, workers: int = 1) -> None:
    """Serve FACTORY with PROTECTIONS until SIGTERM or ^C; with several workers, their
    Prometheus files go to a folder made for the run and removed after it."""
    import uvicorn

    os.environ[STARTED_BY_RUN] = "1"
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="nanoinspect-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(FACTORY, factory=True, host=host, port=port, workers=workers, **PROTECTIONS)
    finally:
        if metrics_dir is not None:  # ours: the workers' metric files die with the server
            shutil.rmtree(metrics_dir, ignore_errors=True)


def check_started_by_run() -> None:
    """Refuse to build the served app for a server `run` did not start: it would lack
    PROTECTIONS, silently. (Code that builds its own app passes create_app its Settings.)"""
    if os.environ.get(STARTED_BY_RUN) != "1":
        raise NanoinspectError(
            f"{FACTORY} was started by a server without nanoinspect's connection protections "
            "(request-head limit and deadline, drain): start it with `nanoinspect serve` "
            "(service.server.run), which takes the same NANOINSPECT_* settings"
        )
