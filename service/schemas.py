"""Request parameters and response bodies as pydantic models, so /docs documents them and
FastAPI validates bounds before any work is done."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.errors import NanoinspectError
from models.images import crop_setting


def _threshold(what: str) -> Any:
    return Field(None, ge=0, le=1e6, allow_inf_nan=False, description=what)


class ScoreParams(BaseModel):
    """Scoring overrides; None keeps the value calibrated into the model."""

    model_config = ConfigDict(extra="forbid")

    alpha: float | None = Field(
        None, ge=0, le=1,
        description="weight of the discriminator term in the map drawn; the verdict stays the "
        "model's unless image_threshold is given",
    )  # fmt: skip
    sigma: float | None = Field(
        None, ge=0, le=64, description="smoothing (px) of the map drawn, <= sigma_max; as alpha"
    )
    pixel_threshold: float | None = _threshold("gamma: Omega = score map > gamma")
    image_threshold: float | None = _threshold("tau: anomalous when score > tau")
    min_area: int | None = Field(None, ge=0, le=10**9, description="smallest region (px)")
    crop_bottom: float | None = Field(
        None, ge=0, le=100_000, allow_inf_nan=False,
        description="SEM banner to drop: rows (a whole number >= 1) or a fraction of the height "
        "(< 1); default: as the model was trained",
    )  # fmt: skip

    @field_validator("crop_bottom")
    @classmethod
    def _crop(cls, value: float | None) -> float | None:
        try:
            return None if value is None else crop_setting(value)
        except NanoinspectError as e:
            raise ValueError(str(e)) from None

    def overrides(self) -> dict[str, Any]:
        keys = ("alpha", "sigma", "pixel_threshold", "image_threshold", "min_area")
        return {k: getattr(self, k) for k in keys}


class ScoreQuery(ScoreParams):
    mask_format: Literal["png", "rle", "none"] = Field("png", description="how to send Omega")
    heatmap: bool = Field(False, description="include a colour heatmap PNG of the score map")
    max_regions: int = Field(100, ge=0, le=100_000, description="largest regions listed")


class OverlayQuery(ScoreParams):
    heatmap: bool = True
    contours: bool = Field(True, description="outline Omega in red")
    boxes: bool = Field(True, description="box each region in cyan")
    opacity: float = Field(0.45, ge=0, le=1, description="heatmap opacity")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class RegionOut(BaseModel):
    bbox: tuple[int, int, int, int] = Field(description="x, y, width, height in pixels")
    area: int
    peak_score: float
    mean_score: float
    counts: bool = Field(
        description="reaches inside the edge band the score is taken from (false: only in the "
        "band, where the graph sees reflected context, so it cannot make the image anomalous)"
    )


class RLE(BaseModel):
    """COCO uncompressed RLE, column-major: counts alternate runs of 0 and 1, zeros first."""

    size: tuple[int, int] = Field(description="[height, width]")
    counts: list[int]


class MaskOut(BaseModel):
    format: Literal["png", "rle"]
    data: str | RLE = Field(description="base64 1-bit PNG, or COCO RLE")


class PngOut(BaseModel):
    format: Literal["png"] = "png"
    data: str = Field(description="base64 PNG")


class Timings(BaseModel):
    """Milliseconds: decoding, waiting for a batch, the batch's inference, encoding."""

    decode: float
    queue: float
    inference: float
    post: float
    batch_size: int = Field(description="images scored in the same inference call")


class ModelIdentity(BaseModel):
    name: str
    version: str = Field(description="export time of the artifact (ISO 8601)")
    sha256: str
    provider: str


class ScoreOut(BaseModel):
    filename: str | None
    score: float = Field(
        description="the image score: the score map's maximum outside the edge band, at the "
        "model's working scale (models.decision); compared with image_threshold"
    )
    is_anomalous: bool = Field(description="score > image_threshold, or out_of_distribution")
    out_of_distribution: str | None = Field(
        description="why the image is unlike the training images (then always anomalous)"
    )
    reason: str = Field(description="why the image is anomalous or normal, in one line")
    image_threshold: float
    pixel_threshold: float
    alpha: float
    sigma: float
    min_area: int
    width: int
    height: int
    format: str = Field(description="detected file format")
    bit_depth: int
    anomalous_area_fraction: float
    regions_total: int
    regions: list[RegionOut] = Field(description="by peak score, descending")
    mask: MaskOut | None
    heatmap: PngOut | None
    notes: list[str] = Field(
        description="what decoding and scoring did, e.g. first page of a TIFF used, zoomed to "
        "the training scale, an overridden alpha that draws the map but does not decide"
    )
    timings: Timings
    model: ModelIdentity


class BatchItem(BaseModel):
    filename: str | None
    result: ScoreOut | None = None
    error: ErrorDetail | None = None


class BatchOut(BaseModel):
    count: int
    failed: int
    items: list[BatchItem]


class ModelOut(ModelIdentity):
    loaded_at: str = Field(description="when this model was put in service (ISO 8601)")
    code_version: str
    format_version: int
    alpha: float
    sigma: float
    sigma_max: float
    pixel_threshold: float
    image_threshold: float
    min_area: int
    stride: int
    term_weights: list[float] = Field(
        description="weights of the BiGAN, feature, statistics and bodies terms"
    )
    views: int = Field(description="flips of each image the networks' maps are averaged over")
    calibration: dict[str, Any] = Field(description="how the settings were chosen: the self-check")
    calibrated_settings: list[list[float]] = Field(
        description="[alpha, sigma] pairs with a pixel threshold calibrated for them, the "
        "model's first"
    )
    normal_model: dict[str, Any] = Field(
        description="the image-level model of the normals (models.ood; empty: none)"
    )
    limits: dict[str, int | float] = Field(description="upload and batching limits")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "loading", "failed"]
    detail: str = ""
    model: ModelIdentity | None = None


class SwapIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        min_length=1, max_length=4096,
        description="the new artifact on the server: absolute, or relative to the model folder",
    )  # fmt: skip
    sha256: str | None = Field(
        None, pattern="^[0-9a-fA-F]{64}$", description="refuse the file unless it has this digest"
    )


class SwapOut(BaseModel):
    previous: ModelIdentity | None = Field(description="the model it replaced")
    current: ModelIdentity
    load_seconds: float = Field(description="loading and checking the new model")
