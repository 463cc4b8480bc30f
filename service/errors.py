"""One error shape for every failure: `{"error": {"code", "message"}}`, whatever raised it
(our code, the runtime, FastAPI's validation or Starlette's routing), so clients parse one
thing and nothing leaks a traceback."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from models.errors import NanoinspectError

# ImageError / NanoinspectError codes -> HTTP status; unknown codes are 422
STATUS_BY_CODE = {
    "empty": 400,
    "unsupported_type": 415,
    "too_large": 413,
    "corrupt": 422,
    "bad_size": 422,
    "bad_image": 422,
    "invalid_input": 422,
}
CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    503: "unavailable",
}
RETRY_AFTER = "1"  # seconds an overloaded server (503) asks a client to wait


class ApiError(Exception):
    """An error the service answers on purpose, with its status, code and headers."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers

    @classmethod
    def from_nanoinspect(cls, e: NanoinspectError) -> ApiError:
        return cls(STATUS_BY_CODE.get(e.code, 422), e.code, str(e))

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    content = {"error": {"code": code, "message": message}}
    return JSONResponse(content, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
        got = f" (got {err['input']!r:.40})" if "input" in err and err["type"] != "missing" else ""
        parts.append(f"{loc}: {err.get('msg', 'invalid')}{got}" if loc else err.get("msg", ""))
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI, count: Callable[[str], None] = lambda code: None) -> None:
    """Route every error through error_response; count(code) is told of each one."""

    def respond(status: int, code: str, message: str, headers=None) -> JSONResponse:
        count(code)
        return error_response(status, code, message, headers)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return respond(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(NanoinspectError)
    async def nanoinspect_error(_: Request, exc: NanoinspectError) -> JSONResponse:
        e = ApiError.from_nanoinspect(exc)
        return respond(e.status, e.code, e.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(422, "invalid_parameter", _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = CODE_BY_STATUS.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code in (404, 405):
            message = f"{message}: {request.method} {request.url.path}"
        return respond(exc.status_code, code, message, getattr(exc, "headers", None))
