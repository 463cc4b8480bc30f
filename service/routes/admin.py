"""Administration: swap the served model without downtime. Needs an admin key
(NANOINSPECT_ADMIN_KEYS, distinct from the API keys); refused when none is configured.

The new artifact is named by a path on the server, inside the model folder
(NANOINSPECT_ADMIN_MODEL_DIR, default the configured model's folder): models arrive by the
deployment's own channel (volume, image, config management), never as an HTTP upload of an
executable graph, and a key holder cannot make the server open arbitrary files."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

from service.deps import InspectorDep, SettingsDep
from service.errors import ApiError
from service.schemas import ErrorBody, SwapIn, SwapOut
from service.settings import Settings

router = APIRouter(prefix="/v1/admin", tags=["admin"])
ADMIN_ERRORS = {s: {"model": ErrorBody} for s in (401, 403, 409, 422)}


def model_dir(settings: Settings) -> Path:
    return (settings.admin_model_dir or settings.model.parent).resolve()


@router.post("/model", responses=ADMIN_ERRORS)
async def swap_model(body: SwapIn, inspector: InspectorDep, settings: SettingsDep) -> SwapOut:
    """Load the artifact at `path` beside the serving model, check it (format, metadata, a
    warm-up inference; `sha256` if given), then swap. Requests already admitted finish on the
    old model. 409 `model_refused` leaves the old model serving."""
    folder = model_dir(settings)
    try:
        path = (folder / body.path).resolve()  # an absolute body.path replaces folder
    except (OSError, ValueError) as e:  # a NUL byte, a symlink loop
        raise ApiError(422, "invalid_parameter", f"path: {e}") from None
    if not path.is_relative_to(folder):
        raise ApiError(403, "forbidden_path", f"{body.path}: models are loaded from {folder} only")
    previous, seconds = await inspector.swap(path, body.sha256)
    return SwapOut(
        previous=inspector.identity(previous) if previous else None,
        current=inspector.identity(),
        load_seconds=round(seconds, 3),
    )
