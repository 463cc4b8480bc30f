"""Every serving knob in one object, read from `NANOINSPECT_*` environment variables (or a
`.env` file), so the CLI, containers and tests configure the service the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

import models
from models.detector import TILE
from models.images import MAX_PIXELS

DEFAULT_MODEL = Path(models.__file__).parent / "default.onnx"
CommaList = Annotated[list[str], NoDecode]  # "a,b,c" in the environment, not JSON


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NANOINSPECT_", env_file=".env", extra="ignore", protected_namespaces=()
    )

    model: Path = Field(DEFAULT_MODEL, description="the ONNX artifact to serve")
    providers: CommaList = Field(["cuda", "cpu"], description="onnxruntime providers, in order")
    require_gpu: bool = Field(False, description="refuse to serve on the CPU")
    threads: int | None = Field(None, ge=1, description="onnxruntime intra-op threads")
    tile: int = Field(TILE, ge=64, description="images larger than this on a side are tiled")
    fixed_size: bool = Field(
        False, description="all images share one size: cuDNN searches its fastest convolutions"
    )
    trt_cache: Path | None = Field(
        None, description="folder (a volume) for TensorRT's built engines; with providers tensorrt"
    )
    fail_on_bad_model: bool = Field(
        False, description="exit at startup if the model cannot be loaded (else /readyz is 503)"
    )

    max_upload_bytes: int = Field(64 << 20, ge=1024, description="largest request body")
    upload_budget_bytes: int = Field(
        256 << 20, ge=1024, description="bodies being received at once, all requests; past: 503"
    )
    max_pixels: int = Field(MAX_PIXELS, ge=64, description="largest decoded image")
    max_batch_files: int = Field(32, ge=1, description="files per /v1/score/batch request")
    decode_threads: int = Field(2, ge=1, description="images decoded at once")

    batch_size: int = Field(8, ge=1, description="images per inference call")
    batch_pixels: int = Field(
        1 << 20, ge=1, description="pixels per inference call (one image always runs): "
        "onnxruntime's memory peak follows it",
    )  # fmt: skip
    idle_release_s: float = Field(
        1.0, ge=0, description="after this long without images, free inference memory is returned"
    )
    batch_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits to fill")
    queue_size: int = Field(64, ge=1, description="images waiting beyond this get 503")
    request_timeout_s: float = Field(60.0, gt=0, description="deadline per request")
    upload_timeout_s: float = Field(
        30.0, gt=0, description="a body not received within this gets 408 (slow or stalled)"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="request line and headers not received within this: 408, closed"
    )

    api_keys: CommaList = Field([], repr=False, description="accepted keys; empty: no auth")
    open_paths: CommaList = Field(
        ["/healthz", "/readyz", "/metrics"], description="paths that need no key"
    )
    cors_origins: CommaList = Field([], description="origins allowed by CORS; '*' for any")
    rate_limit: float = Field(
        0.0, ge=0, description="requests per second per API key (per client without keys); 0: off"
    )
    rate_burst: int = Field(20, ge=1, description="requests a key may send at once")
    admin_keys: CommaList = Field(
        [], repr=False, description="keys for /v1/admin; empty: the admin routes are refused"
    )
    admin_model_dir: Path | None = Field(
        None, description="the admin route loads models from here only (default: MODEL's folder)"
    )
    docs: bool = Field(True, description="serve /docs, /redoc and /openapi.json")
    log_format: Literal["json", "text"] = "json"
    log_level: str = "info"

    @field_validator(
        "providers", "api_keys", "open_paths", "cors_origins", "admin_keys", mode="before"
    )
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value
