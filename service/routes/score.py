"""Scoring routes: one image as JSON, one image as an overlay PNG, several images as JSON.

Uploads are parsed by service.uploads (limit enforced while streaming), not by FastAPI's
form machinery, so the multipart body is declared to OpenAPI by hand."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from models import render
from service.deps import DeadlineDep, InspectorDep, SettingsDep
from service.errors import ApiError
from service.inspector import Scored
from service.schemas import (
    RLE,
    BatchItem,
    BatchOut,
    ErrorBody,
    ErrorDetail,
    MaskOut,
    OverlayQuery,
    PngOut,
    RegionOut,
    ScoreOut,
    ScoreQuery,
    Timings,
)
from service.uploads import files_named, read_parts

router = APIRouter(prefix="/v1", tags=["score"])
SCORE_ERRORS = {s: {"model": ErrorBody} for s in (400, 401, 408, 413, 415, 422, 429, 503, 504)}


def _form(field: str, many: bool) -> dict:
    binary = {"type": "string", "format": "binary"}
    prop = {"type": "array", "items": binary, "minItems": 1} if many else binary
    schema = {"type": "object", "required": [field], "properties": {field: prop}}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


async def _one(request: Request, inspector, settings, query, deadline) -> Scored:
    await inspector.wait_ready(deadline)
    inspector.admit()
    parts = await read_parts(
        request,
        request.app.state.upload_budget,
        max_bytes=settings.max_upload_bytes,
        max_parts=1,
        timeout_s=settings.upload_timeout_s,
    )
    (part,) = files_named(parts, "file", max_files=1)
    return await inspector.score(part, query, deadline)


def _build(s: Scored, q: ScoreQuery) -> ScoreOut:
    """The JSON body (runs in a worker thread: PNG encoding of large masks takes time)."""
    t0 = time.perf_counter()
    r = s.result
    mask = None
    if q.mask_format == "png":
        mask = MaskOut(format="png", data=render.b64(render.mask_png(r.mask)))
    elif q.mask_format == "rle":
        mask = MaskOut(format="rle", data=RLE(**render.mask_rle(r.mask)))
    heatmap = None
    if q.heatmap:
        heatmap = PngOut(data=render.b64(render.heatmap_png(r.score_map, r.pixel_threshold)))
    regions = [
        RegionOut(
            bbox=g.bbox,
            area=g.area,
            peak_score=g.peak_score,
            mean_score=g.mean_score,
            counts=g.counts,
        )
        for g in r.regions[: q.max_regions]
    ]
    height, width = r.mask.shape
    timings = Timings(
        decode=round(s.decode_ms, 3),
        queue=round(s.queue_ms, 3),
        inference=round(s.inference_ms, 3),
        post=round((time.perf_counter() - t0) * 1000, 3),
        batch_size=s.batch_size,
    )
    return ScoreOut(
        filename=s.part.filename,
        score=r.score,
        is_anomalous=r.is_anomalous,
        out_of_distribution=r.out_of_distribution,
        reason=r.reason,
        image_threshold=r.image_threshold,
        pixel_threshold=r.pixel_threshold,
        alpha=r.alpha,
        sigma=r.sigma,
        min_area=r.min_area,
        width=width,
        height=height,
        format=s.decoded.format,
        bit_depth=s.decoded.bit_depth,
        anomalous_area_fraction=r.anomalous_area_fraction,
        regions_total=len(r.regions),
        regions=regions,
        mask=mask,
        heatmap=heatmap,
        notes=[*s.decoded.notes, *r.notes],
        timings=timings,
        model=s.model,
    )


@router.post("/score", responses=SCORE_ERRORS, openapi_extra=_form("file", False))
async def score(
    request: Request,
    query: Annotated[ScoreQuery, Query()],
    inspector: InspectorDep,
    settings: SettingsDep,
    deadline: DeadlineDep,
) -> ScoreOut:
    """Score one image (multipart field `file`): score, verdict, regions, mask, timings."""
    scored = await _one(request, inspector, settings, query, deadline)
    return await anyio.to_thread.run_sync(_build, scored, query)


@router.post(
    "/score/overlay",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **SCORE_ERRORS},
    openapi_extra=_form("file", False),
)
async def overlay(
    request: Request,
    query: Annotated[OverlayQuery, Query()],
    inspector: InspectorDep,
    settings: SettingsDep,
    deadline: DeadlineDep,
) -> Response:
    """The image with the heatmap, Omega's outline and region boxes drawn over it (PNG)."""
    s = await _one(request, inspector, settings, query, deadline)
    r = s.result
    png = await anyio.to_thread.run_sync(
        lambda: render.overlay_png(
            s.decoded.pixels, r.score_map, r.mask, r.regions, r.pixel_threshold,
            heatmap=query.heatmap, contours=query.contours, boxes=query.boxes,
            opacity=query.opacity,
        )
    )  # fmt: skip
    headers = {
        "X-Score": repr(r.score),
        "X-Is-Anomalous": str(r.is_anomalous).lower(),
        "X-Image-Threshold": repr(r.image_threshold),
        "X-Reason": _header_safe(r.reason),
        "X-Regions": str(len(r.regions)),
        "X-Model-Sha256": s.model.sha256,
    }
    return Response(png, media_type="image/png", headers=headers)


def _header_safe(text: str) -> str:
    """A header value: latin-1 only (HTTP headers), one line."""
    return text.encode("latin-1", "replace").decode("latin-1").replace("\n", " ")


@router.post("/score/batch", responses=SCORE_ERRORS, openapi_extra=_form("files", True))
async def score_batch(
    request: Request,
    query: Annotated[ScoreQuery, Query()],
    inspector: InspectorDep,
    settings: SettingsDep,
    deadline: DeadlineDep,
) -> BatchOut:
    """Score several images (field `files`, repeated); a bad file gets its own error entry."""
    await inspector.wait_ready(deadline)
    inspector.admit()
    n = settings.max_batch_files
    parts = await read_parts(
        request,
        request.app.state.upload_budget,
        max_bytes=settings.max_upload_bytes,
        max_parts=n,
        timeout_s=settings.upload_timeout_s,
    )
    files = files_named(parts, "files", max_files=n)
    inspector.admit(len(files))
    outcomes = await asyncio.gather(
        *(inspector.score(p, query, deadline) for p in files), return_exceptions=True
    )
    items = []
    for part, outcome in zip(files, outcomes, strict=True):
        if isinstance(outcome, ApiError):
            error = ErrorDetail(code=outcome.code, message=outcome.message)
            items.append(BatchItem(filename=part.filename, error=error))
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            result = await anyio.to_thread.run_sync(_build, outcome, query)
            items.append(BatchItem(filename=part.filename, result=result))
    failed = sum(item.error is not None for item in items)
    return BatchOut(count=len(items), failed=failed, items=items)
