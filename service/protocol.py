"""uvicorn's h11 protocol with the two things it lacks for an exposed server: a deadline for
request headers (a slowloris client otherwise holds its socket forever; uvicorn only times
out idle keep-alive connections) and framing errors in the service's JSON error shape.

service.server.run passes it to uvicorn's public `http=` setting; uvicorn has no public hook
for a request-head deadline, so this subclasses its h11 protocol (see service.server)."""

from __future__ import annotations

import asyncio
import functools
import json
from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol as UvicornH11Protocol

from service.errors import ApiError
from service.settings import Settings


@functools.cache
def header_timeout_s() -> float:
    return Settings().header_timeout_s


class H11Protocol(UvicornH11Protocol):
    header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_header_timer()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._send_error(400, "bad_request", msg)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self.header_timer = self.loop.call_later(header_timeout_s(), self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timeout(self) -> None:
        """A client that sent part of a request head gets 408; one that sent nothing (an idle
        or pre-opened connection) is closed silently, as the keep-alive timeout does."""
        self.header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        partial, _ = self.conn.trailing_data
        if partial:
            message = f"request headers not received within {header_timeout_s():g} s"
            self._send_error(408, "header_timeout", message)
        else:
            self.transport.close()

    def _send_error(self, status: int, code: str, message: str) -> None:
        """Written raw, below h11's state machine: no request may exist to answer, and the
        connection is closed right after."""
        body = json.dumps(ApiError(status, code, message).body()).encode()
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()
