"""A real `nanoinspect serve` process on loopback: what a client on the network sees, the
CLI's wiring of settings, the streaming byte limit on a real socket, JSON logs, startup
failures, and two workers sharing one port."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from models.detector import Detector
from models.images import decode_image
from tests.test_service_support import (
    ROOT,
    accepted_uploads,
    bad_uploads,
    defect_png,
    metric,
    serve,
)

KEY = {"X-API-Key": "secret-key"}
FILE = {"file": ("defect.png", defect_png())}


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    env = {
        "NANOINSPECT_API_KEYS": "secret-key",
        "NANOINSPECT_BATCH_WAIT_MS": "200",
        "NANOINSPECT_MAX_UPLOAD_BYTES": "2000000",
        "NANOINSPECT_LOG_FORMAT": "json",
    }
    with serve([str(tiny_model)], tmp_path_factory.mktemp("srv") / "log.txt", env) as s:
        yield s


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=KEY, timeout=60) as client:
        yield client


def error_code(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]["code"]


def test_score_over_http(server, http, tiny_model):
    r = http.post("/v1/score", files=FILE, headers={"X-Request-ID": "proc-test-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "proc-test-1"
    detector = Detector(tiny_model, providers=("cpu",), threads=1)
    assert r.json()["score"] == detector.score([decode_image(defect_png()).pixels])[0].score
    lines = [json.loads(line) for line in server.text().splitlines() if line.startswith("{")]
    access = [x for x in lines if x.get("request_id") == "proc-test-1"]
    assert access and access[-1]["route"] == "/v1/score" and access[-1]["status"] == 200
    anonymous = httpx.post(server.url + "/v1/score", files=FILE)
    assert anonymous.status_code == 401 and error_code(anonymous) == "unauthorized"
    assert httpx.get(server.url + "/readyz").status_code == 200  # open without a key


@pytest.mark.parametrize("case", list(bad_uploads()))
def test_bad_inputs_over_http(http, case):
    kwargs, status, code = bad_uploads()[case]
    r = http.post("/v1/score", **kwargs)
    assert (r.status_code, error_code(r)) == (status, code)


def test_accepted_formats_over_http(http):
    for name, (data, width, height, _) in accepted_uploads().items():
        r = http.post("/v1/score", files={"file": (name, data)}, params={"mask_format": "rle"})
        assert r.status_code == 200, (name, r.text)
        assert (r.json()["width"], r.json()["height"]) == (width, height)


def test_upload_limit_over_http(http):
    big = {"file": ("big.bin", b"\0" * 3_000_000)}
    r = http.post("/v1/score", files=big)
    assert (r.status_code, error_code(r)) == (413, "too_large")

    def chunks():  # no Content-Length: the server must stop reading at the limit
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
        yield from (b"\0" * 65536 for _ in range(2000))  # 128 MB

    headers = {"content-type": "multipart/form-data; boundary=b"}
    try:
        r = http.post("/v1/score", content=chunks(), headers=headers)
        assert (r.status_code, error_code(r)) == (413, "too_large")
    except httpx.TransportError:  # the server may close the socket while we still send
        pass
    assert http.get("/healthz").status_code == 200


def test_concurrent_requests_are_batched_over_http(server):
    async def fire():
        async with httpx.AsyncClient(base_url=server.url, headers=KEY, timeout=60) as c:
            files = [{"file": (f"{i}.png", defect_png(i))} for i in range(16)]
            return await asyncio.gather(*(c.post("/v1/score", files=f) for f in files))

    assert all(r.status_code == 200 for r in asyncio.run(fire()))
    text = httpx.get(server.url + "/metrics").text
    one = metric(text, 'nanoinspect_batch_size_bucket{le="1.0"}')
    assert one < metric(text, "nanoinspect_batch_size_count")  # some batch held > 1 image


def test_overload_is_503_over_http(tiny_model, tmp_path):
    env = {"NANOINSPECT_QUEUE_SIZE": "1", "NANOINSPECT_BATCH_WAIT_MS": "1000"}

    async def fire(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/score", files=FILE) for _ in range(10)))

    with serve([str(tiny_model)], tmp_path / "log.txt", env) as s:
        rs = asyncio.run(fire(s.url))
    busy = [r for r in rs if r.status_code == 503]
    assert busy and all(r.headers["retry-after"] == "1" for r in busy)
    assert all(error_code(r) == "overloaded" for r in busy)
    assert all(r.status_code == 200 for r in rs if r not in busy)


def test_sigterm_lets_in_flight_requests_finish(tiny_model, tmp_path):
    env = {"NANOINSPECT_BATCH_WAIT_MS": "1500"}  # the request sits in the queue meanwhile
    with serve([str(tiny_model)], tmp_path / "log.txt", env) as s:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, s.url + "/v1/score", files=FILE, timeout=60)
            while metric(httpx.get(s.url + "/metrics").text, "nanoinspect_queue_depth") < 1:
                assert not pending.done(), pending.result().text
                time.sleep(0.02)
            s.proc.send_signal(signal.SIGTERM)
            assert pending.result().status_code == 200
        s.proc.wait(30)
    assert "Application shutdown complete" in s.text()


def test_missing_model_keeps_readyz_503(tmp_path):
    missing = tmp_path / "nope.onnx"
    with serve([str(missing)], tmp_path / "log.txt", ready=False) as s:
        r = httpx.get(s.url + "/readyz")
        assert r.status_code == 503 and "not found" in r.json()["detail"]
        assert httpx.get(s.url + "/healthz").status_code == 200
        r = httpx.post(s.url + "/v1/score", files=FILE)
        assert (r.status_code, error_code(r)) == (503, "not_ready")
        line = next(x for x in s.text().splitlines() if "model not loaded" in x)
        assert str(missing) in line and json.loads(line)["level"] == "error"


def test_corrupt_model_fails_startup_when_configured(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    cmd = [sys.executable, "-m", "cli", "serve", str(bad), "--fail-on-bad-model",
           "--port", "0", "--providers", "cpu"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    # checked before the server starts: one line, exit 3, no lifespan traceback
    assert out.returncode == 3, out.stderr
    assert out.stderr.startswith("error: ") and "not a loadable ONNX model" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_two_workers_share_a_port(tiny_model, tmp_path):
    with serve([str(tiny_model), "--workers", "2"], tmp_path / "log.txt") as s:
        for _ in range(4):
            assert httpx.post(s.url + "/v1/score", files=FILE, timeout=60).status_code == 200
        text = httpx.get(s.url + "/metrics").text
        assert metric(text, "nanoinspect_images_scored_total") >= 4
