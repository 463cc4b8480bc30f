"""The README as a user reads it: its quick start runs as written, it stays a guide of at most
600 lines, and no tracked file speaks of work items ("session N", "issue N") instead of the
product.

The quick start is the first ```console block under the heading "## Quick start". Each line
starting with "$ " is a command, run by bash in a fresh folder with the package's scripts on
PATH; the lines after it are what it printed. One rule substitutes: the command ending in
" &" is `nanoinspect serve`, started on a free loopback port by the service tests' helper
(tests/test_service_support.serve, which waits for /readyz and always stops it), and
"localhost:8000" in later commands becomes that port."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

from tests.test_service_support import serve

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 600
WORK_ITEM_WORDS = r"session [0-9]|issue [0-9]"


def quick_start() -> list[tuple[str, list[str]]]:
    """(command, the output lines the README shows for it), in order."""
    text = README.read_text()
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, "README.md has no '## Quick start' section"
    block = re.search(r"^```console\n(.*?)^```", section.group(1), re.M | re.S)
    assert block, "the quick start has no ```console block"
    steps: list[tuple[str, list[str]]] = []
    for line in block.group(1).splitlines():
        if line.startswith("$ "):
            steps.append((line[2:].strip(), []))
        elif steps and line.strip():
            steps[-1][1].append(line)
    return steps


def shown_prefix(line: str) -> str:
    """What an output line must start with in the real output: its text before the first
    digit (numbers change with the machine), when that says something (6 characters)."""
    head = re.split(r"\d", line, maxsplit=1)[0].strip()
    return head if len(head) >= 6 else ""


def test_readme_is_a_guide_of_at_most_600_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines (at most {MAX_LINES})"
    for heading in ("## The two commands", "## Quick start", "## Quality"):
        assert heading in lines, heading
    assert "make run" in README.read_text() and "make test" in README.read_text()


def test_no_tracked_file_names_work_items():
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    found = []
    for name in filter(None, files):
        path = ROOT / name.decode()
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # binary
        for n, line in enumerate(text.splitlines(), 1):
            if re.search(WORK_ITEM_WORDS, line, re.I):
                found.append(f"{name.decode()}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def test_quick_start_runs_as_written(tmp_path):
    steps = quick_start()
    commands = [c for c, _ in steps]
    assert any(c.startswith("nanoinspect train") for c in commands)
    assert any(c.startswith("nanoinspect score") for c in commands)
    assert any(c.startswith("curl") for c in commands)
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
        "NANOINSPECT_THREADS": "1",
        "NANOINSPECT_PROVIDERS": "cpu",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with ExitStack() as servers:
        address = None
        for command, shown in steps:
            if command.endswith("&"):
                args = shlex.split(command.rstrip("&"))
                assert args[:2] == ["nanoinspect", "serve"], command
                args = args[2:]
                if "--port" in args:
                    i = args.index("--port")
                    del args[i : i + 2]
                args = [str(tmp_path / a) if (tmp_path / a).exists() else a for a in args]
                server = servers.enter_context(serve(args, tmp_path / "serve.log"))
                address = server.url.removeprefix("http://")
                continue
            if address:
                command = command.replace("localhost:8000", address)
            done = subprocess.run(
                ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True
            )
            out = done.stdout + done.stderr
            assert done.returncode == 0, f"$ {command}\nexit {done.returncode}\n{out}"
            for line in shown:
                prefix = shown_prefix(line)
                assert prefix in out, f"$ {command}\nexpected {prefix!r} in:\n{out}"
