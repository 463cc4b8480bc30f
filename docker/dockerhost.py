"""How `make docker-test` gets a Docker daemon and a base image on a machine that reaches
only package registries: Debian's docker.io, dockerd started without touching the host's
network, and a minimal bookworm made with debootstrap instead of pulled from a registry."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SUITE = "bookworm"
PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
LOCAL_CAS = Path("/usr/local/share/ca-certificates")  # what update-ca-certificates adds
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# No bridge and no iptables: containers here use the host's network, nothing else is touched.
DOCKERD_FLAGS = ["--bridge=none", "--iptables=false", "--ip-masq=false"]


class Failed(Exception):
    """The test cannot go on: the message says why."""


def run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and out.returncode != 0:
        raise Failed(f"{' '.join(cmd[:3])} ... exited {out.returncode}: {out.stderr[-2000:]}")
    return out


def docker_cli() -> str | None:
    # Debian's client matches Debian's daemon; another `docker` on PATH may be a newer client
    debian = Path("/usr/bin/docker")
    return str(debian) if debian.exists() else shutil.which("docker")


def install_docker() -> None:
    """Debian's docker.io and debootstrap, when this is a Debian-like machine run as root."""
    if shutil.which("dockerd") and shutil.which("debootstrap"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    print("docker-test: installing docker.io and debootstrap with apt-get", flush=True)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    run("apt-get", "update", "-qq", env=env)
    run("apt-get", "install", "-y", "-qq", "docker.io", "debootstrap", env=env)


@contextmanager
def daemon(docker: str, workdir: Path) -> Iterator[None]:
    """A running daemon: the one already there, or dockerd started here and stopped after."""
    if run(docker, "info", check=False).returncode == 0:
        yield
        return
    log = (workdir / "dockerd.log").open("w")
    proc = subprocess.Popen(
        ["dockerd", *DOCKERD_FLAGS], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while run(docker, "info", check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (workdir / "dockerd.log").read_text()[-3000:]
                raise Failed(f"dockerd did not start (flags {DOCKERD_FLAGS}):\n{tail}")
            time.sleep(0.5)
        print(f"docker-test: started dockerd {' '.join(DOCKERD_FLAGS)}", flush=True)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        print("docker-test: stopped dockerd", flush=True)


def local_cas() -> list[Path]:
    return sorted(LOCAL_CAS.rglob("*.crt")) if LOCAL_CAS.is_dir() else []


def base_image(docker: str, workdir: Path) -> str:
    """A minimal bookworm with python3, named by everything that goes into it, so a run on
    the same machine reuses it; debootstrap only when it is missing."""
    recipe = hashlib.sha256(f"{SUITE} {PACKAGES} {MIRROR}".encode())
    for ca in local_cas():
        recipe.update(ca.read_bytes())
    tag = f"nanoinspect-base:{SUITE}-{recipe.hexdigest()[:12]}"
    if run(docker, "image", "inspect", tag, check=False).returncode == 0:
        print(f"docker-test: base {tag} already built", flush=True)
        return tag
    if not shutil.which("debootstrap"):
        raise Failed("debootstrap is missing (apt-get install debootstrap)")
    rootfs = workdir / "rootfs"
    run("debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(rootfs), MIRROR)
    for ca in local_cas():  # build-time trust for the proxy; the CUDA base never gets these
        dest = rootfs / "usr/local/share/ca-certificates" / ca.relative_to(LOCAL_CAS)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca, dest)
    run("chroot", str(rootfs), "update-ca-certificates")
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for f in (rootfs / junk).glob("*"):
            if f.is_file():
                f.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    run(
        docker, "import",
        "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change", "ENV LANG=C.UTF-8",
        "-", tag, stdin=tar.stdout,
    )  # fmt: skip
    tar.wait()
    shutil.rmtree(rootfs)
    listed = run(docker, "images", "--format", "{{.Repository}}:{{.Tag}}", "nanoinspect-base")
    for old in set(listed.stdout.split()) - {tag}:  # made from other certificates or packages
        run(docker, "rmi", old, check=False)
    return tag


def pip_build_args() -> list[str]:
    """How pip reaches an index here, for the build stage only: the base's CA bundle (the
    venv's pip carries its own), this host's index settings when they are URLs the build
    can reach (file:// ones cannot), and proxy variables."""
    args = ["PIP_CERT=/etc/ssl/certs/ca-certificates.crt"]
    config = run(sys.executable, "-m", "pip", "config", "list", check=False).stdout
    for key in ("index-url", "extra-index-url", "trusted-host"):
        env = "PIP_" + key.upper().replace("-", "_")
        found = re.findall(rf"^[\w:.]*\.{key}='([^']*)'", config, re.M)
        value = os.environ.get(env) or (found[-1] if found else "")
        urls = [v for v in value.split() if not v.startswith("file:")]
        if urls:
            args.append(f"{env}={' '.join(urls)}")
    proxies = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
    args += [f"{k}={os.environ[k]}" for k in proxies if os.environ.get(k)]
    return [a for arg in args for a in ("--build-arg", arg)]
