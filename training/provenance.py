"""Which code made an artifact: recorded as its `code_version`, so a model can be traced to
the exact source (the package version alone stays 0.1.0 across every change)."""

from __future__ import annotations

import subprocess
from importlib.metadata import version
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]


def code_version() -> str:
    """The git commit of this source tree, "+dirty" when tracked files differ from it; the
    installed package version when the code is not a git checkout (a wheel, an image)."""
    try:
        top = _git("rev-parse", "--show-toplevel")
        if Path(top).resolve() != SOURCE:  # installed inside some other repository
            raise FileNotFoundError(top)
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return version("nanoinspect")
    return commit + ("+dirty" if dirty else "")


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(SOURCE), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()
