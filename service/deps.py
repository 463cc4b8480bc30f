"""Typed dependencies for the routes: the inspector, the request deadline, the API key check
with its per-key rate limit, and the admin key check (keys are declared as security schemes,
so /docs offers an Authorize button)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.errors import ApiError
from service.inspector import Inspector
from service.security import RateLimiter, retry_after
from service.settings import Settings

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")
_bearer = HTTPBearer(auto_error=False, description="an API key as a bearer token")


async def get_inspector(request: Request) -> Inspector:
    return request.app.state.inspector


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_deadline(request: Request) -> float:
    """Loop time by which the request must be answered."""
    return asyncio.get_running_loop().time() + request.app.state.settings.request_timeout_s


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def key_index(given: str | None, keys: list[str]) -> int | None:
    """Which of `keys` is `given` (None: none). Constant-time in the key's content and length:
    equal-size digests, every key compared, whatever matched."""
    if given is None:
        return None
    probe = _digest(given)
    found = None
    for i, key in enumerate(keys):
        if hmac.compare_digest(probe, _digest(key)):
            found = i
    return found


def _given(x_api_key: str | None, bearer: HTTPAuthorizationCredentials | None) -> str | None:
    return x_api_key or (bearer.credentials if bearer else None)


def _unauthorized(what: str) -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        f"a valid {what} is required (X-API-Key or Authorization: Bearer)",
        {"WWW-Authenticate": "Bearer"},
    )


async def require_api_key(
    request: Request,
    x_api_key: Annotated[str | None, Security(_api_key)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    """401 without a valid key (when keys are configured), then 429 over the key's rate
    (per client address without keys); open paths pass untouched."""
    settings: Settings = request.app.state.settings
    if request.url.path in settings.open_paths:
        return
    client = f"ip:{request.client.host if request.client else '-'}"
    if settings.api_keys:
        index = key_index(_given(x_api_key, bearer), settings.api_keys)
        if index is None:
            raise _unauthorized("API key")
        client = f"key:{index}"  # the bucket is named by the key's position, never the key
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is not None and (wait := limiter.take(client)) > 0:
        raise ApiError(
            429,
            "rate_limited",
            f"over the rate limit of {settings.rate_limit:g} requests/s "
            f"(burst {settings.rate_burst}); retry later",
            {"Retry-After": retry_after(wait)},
        )


async def require_admin_key(
    request: Request,
    x_api_key: Annotated[str | None, Security(_api_key)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    """403 when no admin key is configured (admin is off), 401 without a valid admin key."""
    keys = request.app.state.settings.admin_keys
    if not keys:
        raise ApiError(
            403, "admin_disabled", "admin routes are off: set NANOINSPECT_ADMIN_KEYS to use them"
        )
    if key_index(_given(x_api_key, bearer), keys) is None:
        raise _unauthorized("admin key")


InspectorDep = Annotated[Inspector, Depends(get_inspector)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
DeadlineDep = Annotated[float, Depends(get_deadline)]
