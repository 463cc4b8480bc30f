"""Hostile inputs against a real `nanoinspect serve` on loopback: every file
of tests/hostile_corpus.py and every malformed request gets the answer its case states (a
JSON 4xx, or 200 for a valid image), never a 5xx; HTTP framing errors get 400 and a closed
connection; slow and stalled uploads, and request heads never finished (slowloris), get 408
while /healthz keeps answering; concurrent large
bodies are held within the upload budget; the process's peak RSS stays bounded."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from tests.conftest import ROOT, ready_client
from tests.hostile_corpus import (
    MULTIPART,
    Expect,
    check_image_answer,
    file_part,
    grey_png,
    hostile_files,
    hostile_requests,
    image_level_cases,
    multipart,
)
from tests.test_service_support import Server, defect_png, serve

# Two servers: one whose deadlines no body or head here can miss, however loaded the machine
# (the 60 MB bodies are answered for their content, never 408), and one whose short deadlines
# the slow and stalled clients, which never finish, are cut off by.
DEADLINE_S = 120
UPLOAD_TIMEOUT_S = 2
HEADER_TIMEOUT_S = 2
BUDGET = 100 << 20  # two 60 MB bodies cannot be received at once
# over the RSS after startup: the budget's bodies, each copied once for decoding, and slack
# for decoded pixels and Python's heap (measured: ~130 MiB; six 60 MB bodies at once, 720 MB)
PEAK_RSS_GROWTH = 2 * BUDGET + (200 << 20)


def rss(server: Server, field: str = "VmRSS") -> int:
    """Bytes, from /proc/<pid>/status (VmHWM: the peak so far)."""
    with open(f"/proc/{server.proc.pid}/status") as f:
        line = next(x for x in f if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _serve(model, folder, upload_timeout_s: float, header_timeout_s: float) -> Iterator[Server]:
    env = {
        "NANOINSPECT_UPLOAD_TIMEOUT_S": str(upload_timeout_s),
        "NANOINSPECT_HEADER_TIMEOUT_S": str(header_timeout_s),
        "NANOINSPECT_UPLOAD_BUDGET_BYTES": str(BUDGET),
        "NANOINSPECT_LOG_FORMAT": "json",
    }
    with serve([str(model)], folder / "log.txt", env) as s:
        s.rss0 = rss(s)  # type: ignore[attr-defined]
        yield s


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory) -> Iterator[Server]:
    yield from _serve(tiny_model, tmp_path_factory.mktemp("hostile"), DEADLINE_S, DEADLINE_S)


@pytest.fixture(scope="module")
def strict(tiny_model, tmp_path_factory) -> Iterator[Server]:
    """A server with the 2 s deadlines, for clients that never finish."""
    folder = tmp_path_factory.mktemp("deadlines")
    yield from _serve(tiny_model, folder, UPLOAD_TIMEOUT_S, HEADER_TIMEOUT_S)


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json_error(self) -> str:
        """The error code of a `{"error": {"code", "message"}}` body (asserting that shape)."""
        import json

        assert self.headers["content-type"] == "application/json", self.body[:200]
        body = json.loads(self.body)
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
        assert body["error"]["message"]
        return body["error"]["code"]


def open_socket(server: Server, timeout: float = 30) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_reply(sock: socket.socket) -> Reply:
    r = http.client.HTTPResponse(sock)
    r.begin()
    return Reply(r.status, r.headers, r.read())


def exchange(server: Server, head: bytes, body: bytes = b"", pause: float = 0) -> Reply:
    """Send head, then body (one byte per `pause` seconds when pause > 0) from a thread while
    this one reads the answer: a server may answer before the body is sent, and close."""
    sock = open_socket(server)
    done = threading.Event()

    def send() -> None:
        with contextlib.suppress(OSError):  # the server answered early and closed
            sock.sendall(head)
            if not pause:
                sock.sendall(body)
            for i in range(len(body) if pause else 0):
                if done.wait(pause):
                    return
                sock.sendall(body[i : i + 1])

    with sock, ThreadPoolExecutor(1) as pool:
        sending = pool.submit(send)
        try:
            return read_reply(sock)
        finally:
            done.set()
            sending.result()


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def post(server: Server, body: bytes, path: str = "/v1/score", **headers: str) -> Reply:
    headers = {"Content-Type": MULTIPART, "Content-Length": str(len(body))} | headers
    return exchange(server, request_head("POST", path, headers), body)


def check(reply: Reply, expect: Expect) -> None:
    assert reply.status < 500, reply.body[:300]
    if expect.status == 200:
        assert reply.status == 200, reply.body[:300]
    else:
        assert (reply.status, reply.json_error()) == (expect.status, expect.code)


@pytest.mark.parametrize("name", list(hostile_files()))
def test_hostile_file(server, name):
    case = hostile_files()[name]
    body = multipart(file_part(case.data, filename=case.filename, ctype=case.content_type))
    reply = post(server, body, "/v1/score?mask_format=rle")
    check(reply, case.expect)
    if reply.status == 200:
        import json

        out = json.loads(reply.body)
        assert out["width"] >= 8 and out["height"] >= 8 and out["mask"]["format"] == "rle"
        assert out["filename"] == case.filename[:255]  # echoed as data, never used as a path


IMAGE_CASES = list(image_level_cases(np.full((48, 48), 0.5)))  # the names only


@pytest.fixture(scope="module")
def normal_image(synth_data) -> np.ndarray:
    from models.images import load_image

    return load_image(synth_data / "test" / "good" / "000.png").pixels


@pytest.mark.parametrize("name", IMAGE_CASES)
def test_image_level_case_on_a_fresh_model(server, normal_image, name):
    """Frames unlike the training images (tests/hostile_corpus.py: image-level cases) are
    anomalous with a reason, or scored as what they are, by the conftest's fresh model."""
    import json

    def answer(data: bytes, filename: str) -> dict:
        body = multipart(file_part(data, filename=filename))
        reply = post(server, body, "/v1/score?mask_format=none")
        assert reply.status == 200, reply.body[:300]
        return json.loads(reply.body)

    cases = image_level_cases(normal_image)
    normal = answer(grey_png(normal_image), "normal.png")
    model = httpx.get(f"{server.url}/v1/model").json()
    assert model["normal_model"], "calibration fits a model of the normals"
    check_image_answer(cases[name], answer(cases[name].data, cases[name].filename), normal, True)


def test_image_level_cases_on_the_bundled_model(tmp_path):
    """The same cases on models/default.onnx, made from a normal image of its domain."""
    from models.images import load_image
    from training.synth import write_dataset

    write_dataset(
        tmp_path, n_train=1, n_test_good=1, n_test_per_defect=0, size=(512, 352), seed=5,
        progress=False,
    )  # fmt: skip
    normal_image = load_image(tmp_path / "test" / "good" / "000.png").pixels
    cases = image_level_cases(normal_image)
    with ready_client(ROOT / "models" / "default.onnx") as client:
        has_normals = bool(client.get("/v1/model").json()["normal_model"])

        def answer(data: bytes, filename: str) -> dict:
            r = client.post("/v1/score?mask_format=none", files={"file": (filename, data)})
            assert r.status_code == 200, r.text
            return r.json()

        normal = answer(grey_png(normal_image), "normal.png")
        assert not normal["is_anomalous"], normal
        for name, case in cases.items():
            got = answer(case.data, case.filename)
            assert got["reason"], name
            check_image_answer(case, got, normal, has_normals)


@pytest.mark.parametrize("name", list(hostile_requests()))
def test_malformed_request(server, name):
    case = hostile_requests()[name]
    length = {"Content-Length": str(len(case.body))} if case.body else {}
    headers = case.headers if "Transfer-Encoding" in case.headers else case.headers | length
    reply = exchange(server, request_head(case.method, case.path, headers), case.body)
    check(reply, case.expect)
    assert "X-Evil" not in reply.headers


def test_batch_of_hostile_files_answers_each(server):
    """One batch of 32 corpus files: one result or one error per file, in order."""
    import json

    small = [(n, c) for n, c in hostile_files().items() if len(c.data) < 1 << 20]
    cases = dict(small[:32])  # NANOINSPECT_MAX_BATCH_FILES
    body = multipart(*(file_part(c.data, name="files", filename=n) for n, c in cases.items()))
    reply = post(server, body, "/v1/score/batch?mask_format=none")
    assert reply.status == 200, reply.body[:300]
    items = json.loads(reply.body)["items"]
    assert [i["filename"] for i in items] == list(cases)
    for item, case in zip(items, cases.values(), strict=True):
        if case.expect.status == 200:
            assert item["result"] is not None and item["error"] is None, item
        else:
            assert item["error"]["code"] == case.expect.code, item


@pytest.mark.parametrize(
    "head",
    [
        b"POST /v1/score HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/score HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 9\r\n\r\n",
        b"POST /v1/score HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * (1 << 20) + b"\r\n\r\n",
        b"POST /v1/score HTTP/1.1\r\nHost: t\r\n" + b"X: y\r\n" * 100_000 + b"\r\n",
        b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64,  # TLS to a plain port
    ],
    ids=["bad length", "two lengths", "1 MB header", "100k headers", "1 MB URL", "TLS hello"],
)  # fmt: skip
def test_http_framing_errors_close_the_connection(server, head):
    """Errors below the application (the HTTP parser) are a JSON 400 and a closed
    connection: no request reaches the app, nothing is buffered past 32 KiB. The server may
    cut the connection while a long head is still being sent (a reset)."""
    with contextlib.suppress(ConnectionResetError):
        reply = exchange(server, head)
        assert (reply.status, reply.json_error()) == (400, "bad_request")
        assert reply.headers["connection"] == "close"
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_slow_uploads_get_408_while_health_answers(strict):
    body = multipart(file_part(defect_png()))
    mp = {"Content-Type": MULTIPART}
    slow = {
        "drip": lambda: exchange(
            strict, request_head("POST", "/v1/score", mp | {"Content-Length": str(len(body))}),
            body, pause=0.05,
        ),
        "stalled chunked": lambda: exchange(
            strict, request_head("POST", "/v1/score", mp | {"Transfer-Encoding": "chunked"}),
            b"100\r\n" + body[:256] + b"\r\n",
        ),
        "short body": lambda: exchange(
            strict, request_head("POST", "/v1/score", mp | {"Content-Length": str(len(body) + 9)}),
            body,
        ),
    }  # fmt: skip
    with ThreadPoolExecutor(len(slow)) as pool:
        pending = {name: pool.submit(fn) for name, fn in slow.items()}
        time.sleep(0.5)
        assert not any(f.done() for f in pending.values())  # all three are still open
        assert httpx.get(strict.url + "/healthz", timeout=5).status_code == 200
        assert post(strict, body).status == 200  # and real work goes on beside them
        # cut off, not held forever: a hang fails on the result's timeout
        replies = {name: f.result(timeout=UPLOAD_TIMEOUT_S + 20) for name, f in pending.items()}
    for name, reply in replies.items():
        assert (reply.status, reply.json_error()) == (408, "upload_timeout"), name
        assert reply.headers["connection"] == "close", name


def test_unfinished_request_heads_are_cut_off(strict):
    """Slowloris: a head dripped one header line at a time, on a new connection and after a
    completed request on a kept-alive one, gets 408 once HEADER_TIMEOUT_S has passed since
    it began (the drip does not extend it); a connection that sends nothing is closed
    without an answer. /healthz answers meanwhile. A hang fails on the socket timeout."""

    def drip(sock: socket.socket) -> Reply:
        def send() -> None:
            with contextlib.suppress(OSError):
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
                for i in range(100):
                    time.sleep(0.25)
                    sock.sendall(f"X-{i}: y\r\n".encode())

        threading.Thread(target=send, daemon=True).start()
        return read_reply(sock)

    with (
        open_socket(strict, 20) as fresh,
        open_socket(strict, 20) as kept,
        open_socket(strict, 20) as silent,
    ):
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_reply(kept).status == 200
        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(drip, [fresh, kept]))
            assert httpx.get(strict.url + "/healthz", timeout=5).status_code == 200
        assert silent.recv(1) == b""  # closed, no bytes
    for reply in replies:
        assert (reply.status, reply.json_error()) == (408, "header_timeout")
        assert reply.headers["connection"] == "close"


def test_client_gone_mid_upload(server):
    body = multipart(file_part(defect_png()))
    head = request_head("POST", "/v1/score", {"Content-Type": MULTIPART, "Content-Length": "9999"})
    for cut in (0, 10, len(body) // 2):
        with open_socket(server) as sock:
            sock.sendall(head + body[:cut])
    assert post(server, body).status == 200


def test_concurrent_large_bodies_share_the_budget(server):
    """Six 60 MB bodies at once: the upload budget lets one or two be received at a time
    and answers the rest 503 with Retry-After (not buffered), the others 415 (zeros)."""
    big = multipart(file_part(bytes(60 << 20)))
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda _: post(server, big), range(6)))
    codes = sorted((r.status, r.json_error()) for r in replies)
    assert (415, "unsupported_type") in codes and (503, "overloaded") in codes, codes
    assert set(codes) <= {(415, "unsupported_type"), (503, "overloaded")}
    assert all(r.headers["retry-after"] == "1" for r in replies if r.status == 503)


def test_peak_rss_bounded(server):
    """Last: after every case above, the peak RSS stayed within a bound set by the limits."""
    growth = rss(server, "VmHWM") - server.rss0
    assert growth < PEAK_RSS_GROWTH, f"peak RSS grew by {growth / 2**20:.0f} MiB"
    assert server.proc.poll() is None
    text = server.text()
    assert "Traceback" not in text and '"status": 500' not in text
