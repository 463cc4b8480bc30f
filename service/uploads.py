"""Multipart uploads read from the raw request stream with the byte limit enforced while
reading: a declared Content-Length over the limit is refused before any body byte is read,
and a chunked body is cut off as soon as it passes the limit, so an oversized upload never
gets buffered. Files stay in memory (bounded by the limit): images are decoded from bytes.

Hostile clients are cut short too: a body that has not fully arrived within the upload
timeout (a slow drip, a stalled chunked body) gets 408; part headers are capped, since
python-multipart itself lets one part carry megabytes of header lines; and the bodies being
received at once share one byte budget, since the upload limit caps each body, not their sum."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.errors import RETRY_AFTER, ApiError

MAX_PARTS_EXTRA = 8  # non-file form fields tolerated beside the files
MAX_PART_HEADER_BYTES = 16 << 10  # a part's header block; browsers send ~150 bytes


class UploadBudget:
    """Bytes of request bodies being received, summed over all requests. A request that
    would pass the budget while others hold part of it gets 503 with Retry-After; a request
    alone always gets through (its size is capped by the upload limit)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.used = max_bytes, 0

    def take(self, held: int, n: int) -> None:
        """Reserve n more bytes for a request that already holds `held`."""
        if self.used > held and self.used + n > self.max_bytes:
            raise ApiError(
                503,
                "overloaded",
                f"{self.used:,} bytes of uploads are being received (budget "
                f"{self.max_bytes:,}); retry later",
                {"Retry-After": RETRY_AFTER, "Connection": "close"},
            )
        self.used += n


@dataclass
class Part:
    name: str = ""
    filename: str | None = None
    content_type: str = ""
    data: bytearray = field(default_factory=bytearray)


class _Collector:
    """python-multipart callbacks that gather parts, refusing too many of them."""

    def __init__(self, max_parts: int):
        self.parts: list[Part] = []
        self.max_parts = max_parts
        self.ended = False
        self._header = [b"", b""]
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": lambda d, s, e: self.parts[-1].data.extend(d[s:e]),
            "on_header_field": lambda d, s, e: self._extend(0, d[s:e]),
            "on_header_value": lambda d, s, e: self._extend(1, d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }

    def _extend(self, i: int, data: bytes) -> None:
        self._count_header_bytes(len(data))
        self._header[i] += data

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise ApiError(
                400, "bad_multipart", f"part headers exceed {MAX_PART_HEADER_BYTES:,} bytes"
            )

    def on_part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise ApiError(400, "too_many_files", f"more than {self.max_parts} form parts")
        self.parts.append(Part())
        self._headers, self._header_bytes = {}, 0

    def on_header_end(self) -> None:
        self._count_header_bytes(4)  # ": " and CRLF: empty header lines count too
        self._headers[self._header[0].strip().lower()] = self._header[1].strip()
        self._header = [b"", b""]

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        part = self.parts[-1]
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            part.filename = options[b"filename"].decode("utf-8", "replace")[:255]
        part.content_type = self._headers.get(b"content-type", b"").decode("latin-1")[:100]

    def on_end(self) -> None:
        self.ended = True


async def read_parts(
    request: Request, budget: UploadBudget, *, max_bytes: int, max_parts: int, timeout_s: float
) -> list[Part]:
    """All parts of a multipart/form-data body of at most max_bytes, received within
    timeout_s and within the budget; 4xx (or 503) ApiError otherwise."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise ApiError(
            415,
            "not_multipart",
            "send the image as multipart/form-data (e.g. curl -F file=@image.png)",
        )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", "invalid Content-Length")
        if int(declared) > max_bytes:
            raise _too_large(max_bytes, f"Content-Length {int(declared):,}")
    collector = _Collector(max_parts + MAX_PARTS_EXTRA)
    parser = MultipartParser(params[b"boundary"], collector.callbacks())
    received = reserved = 0
    try:
        if declared is not None:  # refused before its body is read
            budget.take(0, int(declared))
            reserved = int(declared)
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_bytes:
                    raise _too_large(max_bytes, "the body")
                if received > reserved:
                    budget.take(reserved, received - reserved)
                    reserved = received
                parser.write(chunk)
        parser.finalize()
    except TimeoutError:
        raise ApiError(
            408,
            "upload_timeout",
            f"the body did not arrive within {timeout_s:g} s ({received:,} bytes received)",
            {"Connection": "close"},
        ) from None
    except FormParserError as e:
        raise ApiError(400, "bad_multipart", f"malformed multipart body ({e})") from None
    except ClientDisconnect:
        raise ApiError(400, "bad_request", "client disconnected during upload") from None
    finally:
        budget.used -= reserved
    if received == 0:
        raise ApiError(400, "empty_body", "the request body is empty")
    if not collector.ended:
        raise ApiError(400, "bad_multipart", "multipart body ends before its closing boundary")
    return collector.parts


def _too_large(limit: int, what: str) -> ApiError:
    return ApiError(
        413,
        "too_large",
        f"{what} exceeds the upload limit of {limit:,} bytes",
        {"Connection": "close"},
    )


def files_named(parts: list[Part], name: str, *, max_files: int) -> list[Part]:
    """The file parts of field `name`: at least one, at most max_files. A part without a
    filename is a text field (RFC 7578), not a file: refused, never decoded as one."""
    files = [p for p in parts if p.name == name]
    if any(p.filename is None for p in files):
        raise ApiError(
            400,
            "missing_file",
            f"form field '{name}' holds text, not a file (send it with a filename, "
            f"e.g. curl -F {name}=@image.png)",
        )
    if not files:
        got = sorted({p.name for p in parts})
        raise ApiError(
            400,
            "missing_file",
            f"no file in form field '{name}'" + (f" (fields sent: {got})" if got else ""),
        )
    if len(files) > max_files:
        what = "one file is" if max_files == 1 else f"at most {max_files} files are"
        raise ApiError(400, "too_many_files", f"{len(files)} files sent, {what} accepted")
    return files
