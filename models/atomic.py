"""Files replaced whole or not at all: the one way the project writes a file that a reader, a
rerun or a crash may meet half-written (models, checkpoints, batch results, masks)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".tmp-"  # hidden, and easy to find for the cleanup after a kill


@contextlib.contextmanager
def replacing(*paths: Path) -> Iterator[tuple[Path, ...]]:
    """Temporary paths beside `paths` for the caller to write (and check). When the block
    completes, each is fsynced, then all are renamed over their paths: readers see the old
    files or the new, never half of one, nor a new file beside an old one. On any failure
    (a disk full, a refused check, ^C) the temporary files are removed."""
    tmps = tuple(p.with_name(f"{TMP_PREFIX}{os.getpid()}-{p.name}") for p in paths)
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmps
        for tmp in tmps:
            _fsync(tmp)
        for path, tmp in zip(paths, tmps, strict=True):
            os.replace(tmp, path)
        for folder in {p.parent for p in paths}:
            _fsync(folder)  # the renames themselves survive a power cut
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
