"""Typed dependencies for the routes: the inspector, the request deadline and the API key
check (declared as security schemes, so /docs offers an Authorize button)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.errors import ApiError
from service.inspector import Inspector
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


def key_matches(given: str, keys: list[str]) -> bool:
    """Constant-time in the key's content and length: equal-size digests, every key compared."""
    probe = _digest(given)
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(probe, _digest(key))
    return ok


async def require_api_key(
    request: Request,
    x_api_key: Annotated[str | None, Security(_api_key)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    settings: Settings = request.app.state.settings
    if not settings.api_keys or request.url.path in settings.open_paths:
        return
    given = x_api_key or (bearer.credentials if bearer else None)
    if given is None or not key_matches(given, settings.api_keys):
        raise ApiError(
            401,
            "unauthorized",
            "a valid API key is required (X-API-Key or Authorization: Bearer)",
            {"WWW-Authenticate": "Bearer"},
        )


InspectorDep = Annotated[Inspector, Depends(get_inspector)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
DeadlineDep = Annotated[float, Depends(get_deadline)]
