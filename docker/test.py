"""`make docker-test`: the serving image built from the real Dockerfile and run for real.

No container registry is reachable from CI, so the base image is made here: Debian's
debootstrap of a minimal bookworm with python3, imported with `docker import` and kept in the
daemon between runs. The host's locally installed CA certificates go into that base only (a
re-signing proxy sits between these machines and PyPI), and pip's settings are passed as
build arguments of the build stage: neither reaches the image's defaults.

The container shares the host's network namespace and listens on a loopback port: no bridge,
no iptables rules, no traffic to any address but 127.0.0.1.
Without Docker (and no root to install it) the test is skipped, unless CI is set.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from dockerhost import Failed, base_image, daemon, docker_cli, install_docker, pip_build_args, run
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "nanoinspect:docker-test"
# Same artifact, same onnxruntime CPU kernels; the container may hold another onnxruntime
# release than this venv, so allow float noise, not a different answer.
SCORE_RTOL = 1e-4
MASK_MAX_DIFF = 1e-3  # fraction of mask pixels allowed to differ
IN_CI = bool(os.environ.get("CI"))


class CheckFailed(Failed):
    """A check that failed; already printed."""


class Report:
    def __init__(self) -> None:
        self.passed, self.failed = 0, 0
        self.seconds: dict[str, float] = {}
        self.measures: list[str] = []

    def check(self, ok: bool, what: str, detail: str = "") -> None:
        self.passed += ok
        self.failed += not ok
        print(
            f"  {'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail else ""), flush=True
        )
        if not ok:
            raise CheckFailed(what)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        print(f"docker-test: {name} ...", flush=True)
        start = time.monotonic()
        yield
        self.seconds[name] = time.monotonic() - start
        print(f"docker-test: {name} took {self.seconds[name]:.1f} s", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def defect_png() -> bytes:
    from training.synth import draw_sample

    pixels, mask = draw_sample(np.random.default_rng(6), 512, 384, "bead")
    assert mask.any()
    buf = io.BytesIO()
    Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def queue_depth(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    m = re.search(r"^nanoinspect_queue_depth(?:\{[^}]*\})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def state(docker: str, name: str) -> dict:
    return json.loads(run(docker, "inspect", "-f", "{{json .State}}", name).stdout)


def wait_healthy(docker: str, name: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        s = state(docker, name)
        health = (s.get("Health") or {}).get("Status")
        if health == "healthy":
            return
        if not s["Running"] or health == "unhealthy" or time.monotonic() > deadline:
            logs = run(docker, "logs", "--tail", "40", name, check=False)
            raise Failed(f"{name} is {health} (running: {s['Running']}):\n{logs.stderr[-3000:]}")
        time.sleep(1)


def check_image(r: Report, docker: str) -> None:
    info = json.loads(run(docker, "image", "inspect", IMAGE).stdout)[0]
    config = info["Config"]
    user = config.get("User") or "0"
    r.check(
        user.split(":")[0].isdigit() and user.split(":")[0] != "0",
        "image runs as a numeric non-root user",
        user,
    )
    r.check(
        "/readyz" in " ".join((config.get("Healthcheck") or {}).get("Test", [])),
        "image HEALTHCHECK probes /readyz",
    )
    r.measures.append(f"image size {info['Size'] / 1e6:.0f} MB")


def check_require_gpu(r: Report, docker: str) -> None:
    port = str(free_port())
    out = run(
        docker, "run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp",
        "-e", "NANOINSPECT_HOST=127.0.0.1", "-e", f"NANOINSPECT_PORT={port}",
        "-e", "NANOINSPECT_REQUIRE_GPU=1", IMAGE, check=False, timeout=300,
    )  # fmt: skip
    said = "a GPU is required" in out.stderr + out.stdout
    r.check(
        out.returncode != 0 and said,
        "NANOINSPECT_REQUIRE_GPU=1 without a GPU exits",
        f"exit {out.returncode}",
    )


def check_serving(r: Report, docker: str, name: str, url: str) -> None:
    from models.detector import Detector
    from models.images import decode_image

    png = defect_png()
    pid = state(docker, name)["Pid"]
    uids = re.search(r"^Uid:\s+(.*)$", Path(f"/proc/{pid}/status").read_text(), re.M)
    r.check(
        uids is not None and all(u != "0" for u in uids.group(1).split()),
        "the serving process runs as non-root",
        f"Uid {uids.group(1) if uids else '?'}",
    )
    touch = run(docker, "exec", name, "touch", "/opt/venv/x", check=False)
    r.check(touch.returncode != 0, "the root filesystem is read-only (and the app serves)")

    resp = httpx.post(
        url + "/v1/score",
        files={"file": ("bead.png", png)},
        params={"mask_format": "png"},
        timeout=120,
    )
    r.check(resp.status_code == 200, "POST /v1/score answers 200", str(resp.status_code))
    got = resp.json()
    local = Detector(ROOT / "models/default.onnx", providers=["cpu"])
    want = local.score([decode_image(png).pixels])[0]
    served_mask = np.array(Image.open(io.BytesIO(base64.b64decode(got["mask"]["data"]))))
    diff = abs(got["score"] - want.score)
    r.measures.append(f"|score diff| {diff:.1e}")
    r.check(
        diff <= SCORE_RTOL * max(1.0, abs(want.score)),
        "score matches the Detector outside the container",
        f"{got['score']:.6f} vs {want.score:.6f} (|diff| {diff:.1e}, rtol {SCORE_RTOL})",
    )
    mask_diff = float((served_mask.astype(bool) != want.mask).mean())
    r.check(
        mask_diff <= MASK_MAX_DIFF
        and got["is_anomalous"] == want.is_anomalous
        and got["model"]["sha256"] == local.sha256,
        "mask, verdict and model match",
        f"{mask_diff:.1e} of mask pixels differ",
    )


def check_drain(r: Report, docker: str, name: str, url: str) -> None:
    png = defect_png()
    with ThreadPoolExecutor(1) as pool:  # the request waits in the batcher's queue (1.5 s)
        pending = pool.submit(httpx.post, url + "/v1/score", files={"file": ("b.png", png)})
        while queue_depth(url) < 1:
            if pending.done():
                raise Failed(f"request finished before SIGTERM: {pending.result().text[:200]}")
            time.sleep(0.02)
        stop = threading.Thread(target=run, args=(docker, "stop", "-t", "40", name))
        stop.start()  # docker stop sends the image's STOPSIGNAL (SIGTERM)
        done = pending.result()
        stop.join()
    r.check(
        done.status_code == 200 and "score" in done.json(),
        "a request in flight at SIGTERM completes",
        str(done.status_code),
    )
    s = state(docker, name)
    logs = run(docker, "logs", name).stderr
    r.check(
        s["ExitCode"] == 0 and "Application shutdown complete" in logs,
        "the container drains and exits 0",
        f"exit {s['ExitCode']}",
    )


def build(docker: str, base: str, workdir: Path) -> None:
    """The build stage is tagged too, so that pruning the untagged images of earlier runs
    keeps its dependency layer as the cache of the next run."""
    log = workdir / "build.log"
    args = ["--network", "host", "--build-arg", f"BASE_IMAGE={base}", *pip_build_args()]
    for target in (["--target", "build", "-t", IMAGE + "-build"], ["-t", IMAGE]):
        with log.open("a") as f:
            built = subprocess.run(
                [docker, "build", *args, *target, str(ROOT)], stdout=f, stderr=subprocess.STDOUT
            )
        if built.returncode:
            raise Failed(f"docker build failed:\n{log.read_text()[-4000:]}")
    run(docker, "image", "prune", "-f")


@contextmanager
def container(docker: str, port: int) -> Iterator[str]:
    """The image as a plant runs it (read-only root, no capabilities), on a loopback port;
    requests wait 1.5 s for a batch so that one is surely in flight at SIGTERM."""
    name = f"nanoinspect-docker-test-{os.getpid()}"
    run(
        docker, "run", "-d", "--name", name, "--network", "host",
        "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "-e", "NANOINSPECT_HOST=127.0.0.1", "-e", f"NANOINSPECT_PORT={port}",
        "-e", "NANOINSPECT_BATCH_WAIT_MS=1500", IMAGE,
    )  # fmt: skip
    try:
        yield name
    finally:
        run(docker, "rm", "-f", name, check=False)


def exercise(r: Report, docker: str, workdir: Path) -> None:
    with r.timed("base image"):
        base = base_image(docker, workdir)
    with r.timed("image build"):
        build(docker, base, workdir)
    check_image(r, docker)
    with r.timed("REQUIRE_GPU run"):
        check_require_gpu(r, docker)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with container(docker, port) as name:
        with r.timed("health wait"):
            wait_healthy(docker, name)
        r.check(True, "docker reports the container healthy")
        check_serving(r, docker, name, url)
        check_drain(r, docker, name, url)


def main() -> int:
    r = Report()
    install_docker()
    docker = docker_cli()
    running = docker is not None and run(docker, "info", check=False).returncode == 0
    can_start = shutil.which("dockerd") is not None and os.geteuid() == 0
    if docker is None or not (running or can_start):
        print(
            "docker-test: no Docker here: no daemon runs and none can be installed or started"
            + (" (CI is set: failing)" if IN_CI else "; skipped")
        )
        return 1 if IN_CI else 0
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nanoinspect-docker-", dir="/var/tmp") as tmp:
        try:
            with daemon(docker, Path(tmp)):
                exercise(r, docker, Path(tmp))
        except CheckFailed:
            pass  # printed where it failed
        except Failed as e:
            print(f"docker-test: {e}", file=sys.stderr)
            r.failed += 1
        except Exception:
            traceback.print_exc()
            r.failed += 1
    times = [f"{k} {v:.0f} s" for k, v in r.seconds.items()]
    total = f"total {time.monotonic() - start:.0f} s"
    print("docker-test: " + ", ".join([*times, total, *r.measures]))
    print(f"docker-test: {r.passed} passed, {r.failed} failed")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
