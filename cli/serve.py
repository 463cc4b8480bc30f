"""`nanoinspect serve`: the REST API, metrics and web page (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from models.errors import NanoinspectError

if TYPE_CHECKING:
    from service.settings import Settings


def serve(
    model: Annotated[
        Path | None,
        typer.Argument(
            help="ONNX artifact (default: $NANOINSPECT_MODEL, else models/default.onnx)"
        ),
    ] = None,
    host: Annotated[str, typer.Option(envvar="NANOINSPECT_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="NANOINSPECT_PORT")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="processes, each with its own model")] = 1,
    providers: Annotated[
        str | None, typer.Option(help="e.g. cuda,cpu or tensorrt,cuda,cpu")
    ] = None,
    require_gpu: Annotated[
        bool | None, typer.Option("--require-gpu/--allow-cpu", help="refuse a CPU fallback")
    ] = None,
    fail_on_bad_model: Annotated[
        bool | None, typer.Option(help="exit if the model cannot be loaded (else /readyz is 503)")
    ] = None,
    log_format: Annotated[str | None, typer.Option(help="json or text")] = None,
) -> None:
    """Serve the REST API, metrics and web page; every setting also reads NANOINSPECT_*
    (API keys only from NANOINSPECT_API_KEYS, so they never show in a process list)."""
    import os

    from pydantic import ValidationError

    from service.observability import configure_logging
    from service.server import run
    from service.settings import Settings

    given = {
        "model": model,
        "providers": providers,
        "require_gpu": require_gpu,
        "fail_on_bad_model": fail_on_bad_model,
        "log_format": log_format,
    }
    for key, value in given.items():  # workers build their Settings from the environment
        if value is not None:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            os.environ[f"NANOINSPECT_{key.upper()}"] = text
    try:
        settings = Settings()
    except ValidationError as e:
        first = e.errors()[0]
        raise NanoinspectError(f"setting {first['loc'][0]}: {first['msg']}") from None
    configure_logging(settings.log_format, settings.log_level)
    if settings.fail_on_bad_model:
        _check_model(settings)
    run(host, port, workers)


def _check_model(settings: Settings) -> None:
    """--fail-on-bad-model: load the model once before the server starts, so a bad one ends
    as one line and exit 3 instead of a lifespan traceback from every worker."""
    from models.detector import Detector

    try:
        Detector(settings.model, providers=settings.providers, require_gpu=settings.require_gpu)
    except NanoinspectError as e:
        e.exit_code = 3
        raise
