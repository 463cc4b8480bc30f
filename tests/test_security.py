"""Security: keys compared in constant time, per-key rate limits (429 with
Retry-After), uploads never written to disk (Python audit hooks see every file the process
opens), no image bytes or keys in a real server's log, security headers and a strict CSP,
CORS closed by default, docs and admin routes switchable off."""

from __future__ import annotations

import base64
import hmac
import io
import os
import re
import sys
import tempfile
import threading

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from service import deps
from service.security import STRICT_CSP, RateLimiter
from tests.test_service import assert_error, running, settings_for
from tests.test_service_support import ROOT, defect_png, serve

pytestmark = pytest.mark.anyio
FILE = {"file": ("defect.png", defect_png())}


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


def test_every_key_is_compared_whatever_matches(monkeypatch):
    """Constant time: as many equal-length comparisons whichever key (or none) matches."""
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest
    monkeypatch.setattr(
        deps.hmac, "compare_digest", lambda a, b: calls.append((len(a), len(b))) or real(a, b)
    )
    keys = ["alpha-key", "b", "a-much-longer-third-key-" * 4]
    cases = [("alpha-key", 0), ("b", 1), (keys[2], 2), ("alpha-ke", None),
             ("alpha-key ", None), ("", None), ("ключ", None), (None, None)]  # fmt: skip
    for given, index in cases:
        calls.clear()
        assert deps.key_index(given, keys) == index, given
        if given is not None:
            assert calls == [(32, 32)] * len(keys), given


def test_token_bucket_refills_at_its_rate():
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.take("k", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("k", now=0.0) == pytest.approx(0.5)  # one token in 1/rate s
    assert limiter.take("k", now=0.5) == 0.0
    assert limiter.take("other", now=0.5) == 0.0  # buckets are per client
    assert limiter.take("k", now=100.0) == 0.0  # refilled, capped at burst:
    assert [limiter.take("k", now=100.0) for _ in range(3)][-1] == pytest.approx(0.5)
    small = RateLimiter(rate=1.0, burst=1, max_clients=2)
    for client in ("a", "b", "c"):
        small.take(client, now=0.0)
    assert len(small._buckets) == 2  # bounded: the least recently used is dropped


async def test_rate_limit_per_key_is_429_with_retry_after(tiny_model):
    s = settings_for(tiny_model, api_keys=["k-one", "k-two"], rate_limit=0.2, rate_burst=3)
    async with running(s) as c:
        one, two = {"X-API-Key": "k-one"}, {"X-API-Key": "k-two"}
        assert [(await c.get("/v1/model", headers=one)).status_code for _ in range(3)] == [200] * 3
        r = await c.post("/v1/score", files=FILE, headers=one)
        assert_error(r, 429, "rate_limited")
        assert 1 <= int(r.headers["retry-after"]) <= 5  # a token every 1 / 0.2 s
        assert (await c.get("/v1/model", headers=two)).status_code == 200  # its own bucket
        assert (await c.get("/healthz")).status_code == 200  # open paths are not limited
        assert_error(await c.get("/v1/model", headers={"X-API-Key": "bad"}), 401, "unauthorized")
        text = (await c.get("/metrics")).text
        assert 'nanoinspect_errors_total{code="rate_limited"} 1.0' in text
    async with running(settings_for(tiny_model, rate_limit=0.2, rate_burst=1)) as c:
        assert (await c.get("/v1/model")).status_code == 200  # without keys: per client
        assert_error(await c.get("/v1/model"), 429, "rate_limited")


async def test_uploads_are_never_written_to_disk(tiny_model):
    """Every file the process opens for writing, and every temporary file, during a 6 MB
    upload (python-multipart would spool anything above 1 MB to a temporary file)."""
    written: list[tuple] = []
    watching = threading.Event()

    def hook(event: str, args: tuple) -> None:
        if not watching.is_set():
            return
        if event == "open" and args[0] is not None:
            mode, flags = args[1] or "", args[2] or 0
            if set(str(mode)) & set("wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                written.append((event, args[0]))
        elif event.startswith("tempfile."):
            written.append((event, args))

    sys.addaudithook(hook)  # cannot be removed: it only records while `watching` is set
    noise = np.random.default_rng(0).integers(0, 256, (1600, 1600), np.uint8)
    big = io.BytesIO()
    Image.fromarray(noise).save(big, "PNG", compress_level=0)
    assert big.tell() > 2_000_000
    async with running(settings_for(tiny_model)) as c:
        watching.set()
        try:
            r = await c.post("/v1/score", files={"file": ("big.png", big.getvalue())})
            b = await c.post("/v1/score/batch", files=[("files", ("a.png", big.getvalue()))] * 2)
        finally:
            watching.clear()
        assert r.status_code == 200 and b.status_code == 200, (r.text, b.text[:300])
        assert written == []
        watching.set()  # the hook does see a spooled upload
        try:
            with tempfile.SpooledTemporaryFile(max_size=1 << 20) as spool:
                spool.write(big.getvalue())
        finally:
            watching.clear()
        assert written


def test_no_image_bytes_or_keys_in_the_log(tiny_model, tmp_path):
    """A real server at DEBUG log level: keys (good, wrong, admin), the file name, image
    content and the upload's bytes never reach its log."""
    key, admin, wrong = "api-KEY-4f1a9c", "admin-KEY-77e2b0", "wrong-KEY-d0d0d0"
    name = "scan-NAME-91c4.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "IMAGE-TEXT-5b3e")
    pixels = (np.random.default_rng(1).random((96, 96)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", pnginfo=info)
    image = buf.getvalue()
    env = {"NANOINSPECT_API_KEYS": key, "NANOINSPECT_ADMIN_KEYS": admin,
           "NANOINSPECT_LOG_LEVEL": "debug"}  # fmt: skip
    with serve([str(tiny_model)], tmp_path / "log.txt", env) as s:
        post = lambda k, path="/v1/score", **kw: httpx.post(  # noqa: E731
            s.url + path, headers={"Authorization": f"Bearer {k}"}, timeout=60, **kw
        )
        assert post(key, files={"file": (name, image)}).status_code == 200
        assert post(key, files={"file": (name, image[:300])}).status_code == 422
        assert post(wrong, files={"file": (name, image)}).status_code == 401
        assert post(admin, "/v1/admin/model", json={"path": "nope.onnx"}).status_code == 409
        log = s.text()
    assert "POST /v1/score 200" in log and "POST /v1/score 401" in log  # it did log them
    for secret in (key, admin, wrong, name, "IMAGE-TEXT-5b3e"):
        assert secret not in log, secret
    assert base64.b64encode(image[8:48]).decode()[:40] not in log
    raw = log.encode("latin-1", "replace")
    assert image[8:40] not in raw and image[100:132] not in raw


async def test_security_headers_and_strict_csp(client):
    for path in ("/", "/static/app.js", "/v1/model", "/healthz", "/no/such/path", "/docs"):
        r = await client.get(path)
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["x-frame-options"] == "DENY", path
        assert r.headers["referrer-policy"] == "no-referrer", path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path
    page = await client.get("/")
    assert page.headers["content-security-policy"] == STRICT_CSP
    assert "unsafe-inline" not in STRICT_CSP and "unsafe-eval" not in STRICT_CSP
    html = page.text
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", html))
    assert "fetch(`data:" not in (ROOT / "service/static/app.js").read_text()


@pytest.fixture(scope="module")
async def client(tiny_model):
    async with running(settings_for(tiny_model)) as c:
        yield c


async def test_cors_closed_by_default(client):
    origin = "https://elsewhere.example"
    r = await client.get("/v1/model", headers={"Origin": origin})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    for path in ("/v1/score", "/v1/admin/model"):
        r = await client.options(path, headers=pre)
        assert "access-control-allow-origin" not in r.headers and r.status_code == 405, path


async def test_admin_is_refused_when_no_admin_key_is_configured(client):
    r = await client.post("/v1/admin/model", json={"path": "x.onnx"})
    assert_error(r, 403, "admin_disabled")


async def test_docs_switch_off(tiny_model):
    async with running(settings_for(tiny_model, docs=False)) as c:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert_error(await c.get(path), 404, "not_found")
        assert (await c.post("/v1/score", files=FILE)).status_code == 200
