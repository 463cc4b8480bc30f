"""Operations: liveness, readiness, Prometheus metrics and the served model's identity."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import InspectorDep, SettingsDep
from service.schemas import ErrorBody, Health, ModelOut, Readiness

router = APIRouter()


@router.get("/healthz", tags=["ops"])
async def healthz() -> Health:
    """The process is alive (the model may still be loading)."""
    return Health()


@router.get("/readyz", tags=["ops"], responses={503: {"model": Readiness}})
async def readyz(inspector: InspectorDep) -> Readiness:
    """200 once the model is loaded and warmed; 503 while loading or after a failed load."""
    if inspector.status != "ready":
        body = Readiness(status=inspector.status, detail=inspector.detail)
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "5"})
    return Readiness(status="ready", model=inspector.identity())


@router.get("/metrics", tags=["ops"], response_class=Response)
async def metrics(inspector: InspectorDep) -> Response:
    """Prometheus text exposition."""
    return Response(inspector.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/model", tags=["model"], responses={503: {"model": ErrorBody}})
async def model(inspector: InspectorDep, settings: SettingsDep) -> ModelOut:
    """The served artifact: identity, calibrated defaults (what overrides start from), limits."""
    d = inspector.ready()
    m = d.meta
    limits = {
        "max_upload_bytes": settings.max_upload_bytes,
        "max_pixels": settings.max_pixels,
        "max_batch_files": settings.max_batch_files,
        "batch_size": settings.batch_size,
        "batch_pixels": settings.batch_pixels,
        "queue_size": settings.queue_size,
        "request_timeout_s": settings.request_timeout_s,
        "rate_limit": settings.rate_limit,
        "rate_burst": settings.rate_burst,
    }
    return ModelOut(
        **inspector.identity(d).model_dump(),
        loaded_at=inspector.loaded_at,
        code_version=m.code_version,
        format_version=m.format_version,
        alpha=m.alpha,
        sigma=m.sigma,
        sigma_max=m.sigma_max,
        pixel_threshold=m.pixel_threshold,
        image_threshold=m.image_threshold,
        min_area=m.min_area,
        stride=m.stride,
        term_weights=m.term_weights,
        views=m.views,
        calibration=m.calibration,
        calibrated_settings=[list(pair) for pair in m.calibrated_settings()],
        normal_model=m.normal_model,
        limits=limits,
    )
