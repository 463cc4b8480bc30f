"""The server's connection protections cannot be dropped by starting the app another way:
uvicorn's own command line on the app factory refuses, naming the way that keeps
them; `nanoinspect serve` (service.server.run) keeps them (tests/test_hostile.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.test_service_support import ROOT, free_port


def test_bare_uvicorn_on_the_factory_refuses_to_serve(tiny_model):
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app"]
    env = os.environ | {"NANOINSPECT_MODEL": str(tiny_model), "NANOINSPECT_PROVIDERS": "cpu"}
    env.pop("NANOINSPECT_STARTED_BY_RUN", None)
    done = subprocess.run(
        [*cmd, "--port", str(free_port())], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "start it with `nanoinspect serve`" in done.stderr + done.stdout
