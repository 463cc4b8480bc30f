"""The published OpenAPI schema, corrected where FastAPI's generator cannot know what the
server does (each found by schemathesis, tests/test_fuzz.py):

- the API key check is a router-wide dependency, so every operation is marked as needing a
  key, but the open paths (NANOINSPECT_OPEN_PATHS: /healthz, /readyz, /metrics) need none;
- an operation with a JSON body answers 400 when the body is not JSON (FastAPI's own check,
  before any handler runs), which its `responses` do not list."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service.settings import Settings

_ERROR_400 = {
    "description": "Bad Request: the body is not valid JSON",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
}


def adjust_schema(app: FastAPI, settings: Settings) -> None:
    """Make app.openapi() return the corrected schema (built once, then cached by FastAPI)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for path, operations in schema.get("paths", {}).items():
                for operation in operations.values():
                    if path in settings.open_paths:
                        operation["security"] = []
                    body = operation.get("requestBody", {}).get("content", {})
                    if "application/json" in body:
                        operation["responses"].setdefault("400", _ERROR_400)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
