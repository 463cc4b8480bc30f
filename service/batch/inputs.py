"""What a batch job scores: INPUT arguments (files, folders, globs) expanded to a fixed,
sorted list of images, each with the path its outputs are written under.

The list is a pure function of the arguments and the file system, so a resumed run finds
the same inputs and knows which are done."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from models.errors import NanoinspectError
from models.images import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Item:
    path: str  # absolute: the key that identifies an input across runs
    relative: str  # POSIX path under the root it was found in: names its masks/overlays/maps


def _abs(path: Path) -> Path:
    """Absolute and normalised (`..` removed) without resolving symlinks: the user's names."""
    return Path(os.path.abspath(path))


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _walk(folder: Path, skip: Path | None) -> list[Path]:
    """Images under `folder`, hidden entries and the job's own output folder excluded."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and _abs(here / d) != skip
        )
        found += [here / f for f in sorted(filenames) if not f.startswith(".")]
    return [p for p in found if _is_image(p) and p.is_file()]


def _glob_root(pattern: str) -> Path:
    """The folder before the first wildcard: matches are named relative to it."""
    parts = Path(pattern).parts
    first = next(i for i, p in enumerate(parts) if glob.has_magic(p))
    return Path(*parts[:first]) if first else Path(".")


def expand(inputs: list[str], *, out: Path | None = None) -> list[Item]:
    """Files are taken as given (any extension: a bad one becomes an error row), folders are
    searched recursively for image files, globs (`**` allowed) likewise. The same file reached
    twice counts once. A missing path or a pattern that matches nothing is a usage error."""
    skip = _abs(out) if out is not None else None
    items: dict[str, Item] = {}
    for arg in inputs:
        if glob.has_magic(arg):
            root = _glob_root(arg)
            matches = [Path(m) for m in sorted(glob.glob(arg, recursive=True))]
            found = [p for p in matches if p.is_file() and _is_image(p)]
            for folder in (p for p in matches if p.is_dir()):
                found += _walk(folder, skip)
            if not found:
                raise NanoinspectError(f"{arg}: matches no image files")
            pairs = [(p, _abs(p).relative_to(_abs(root))) for p in found]
        else:
            p = Path(arg)
            if p.is_dir():
                pairs = [(f, f.relative_to(p)) for f in _walk(p, skip)]
                if not pairs:
                    raise NanoinspectError(f"{arg}: folder holds no image files")
            elif p.exists():
                pairs = [(p, Path(p.name))]
            else:
                raise NanoinspectError(f"{arg}: no such file or folder")
        for path, rel in pairs:
            if skip is not None and skip in _abs(path).parents:
                continue
            key = str(_abs(path))
            items.setdefault(key, Item(key, PurePosixPath(*rel.parts).as_posix()))
    if not items:
        raise NanoinspectError("no images to score")
    return sorted(items.values(), key=lambda i: i.path)


def check_output_names(items: list[Item]) -> None:
    """Two inputs must not write the same masks/<name>.png: refuse before any work."""
    seen: dict[str, str] = {}
    for it in items:
        stem = str(PurePosixPath(it.relative).with_suffix(""))
        if stem in seen:
            raise NanoinspectError(
                f"{seen[stem]} and {it.path} would both write outputs named {stem}.*: "
                "pass their common folder as INPUT instead"
            )
        seen[stem] = it.path


def output_path(out: Path, kind: str, item: Item, suffix: str) -> Path:
    """DIR/<kind>/<relative path with its suffix replaced>, e.g. DIR/masks/good/000.png."""
    return out / kind / PurePosixPath(item.relative).with_suffix(suffix)
