"""What the quality benchmarks share: run `nanoinspect` as a user does (a subprocess, logged
and timed), identify the code measured, time the Detector, and format tables.

The benchmarks drive the CLI, not training's Python functions, so they measure what a
user gets and stay valid while train, export and calibration change underneath."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("models", "training", "service", "cli")  # a change here changes what is measured


class StepFailed(RuntimeError):
    """A `nanoinspect` command exited non-zero; the message ends with its log's tail."""

    def __init__(self, message: str, step: str):
        super().__init__(message)
        self.step = step


def nanoinspect() -> list[str]:
    """The installed `nanoinspect` script next to this Python, else the module itself."""
    script = Path(sys.executable).parent / "nanoinspect"
    if script.is_file():
        return [str(script)]
    found = shutil.which("nanoinspect")
    return [found] if found else [sys.executable, "-m", "cli"]


def run_step(args: Sequence[str], log: Path, *, echo: bool = True) -> float:
    """Run `nanoinspect ARGS`, its output into LOG; return its wall-clock seconds."""
    cmd = [*nanoinspect(), *map(str, args)]
    shown = "nanoinspect " + " ".join(map(str, args))
    if echo:
        print(f"  $ {shown}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with log.open("w") as out:
        out.write(f"$ {shown}\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise StepFailed(f"`{shown}` exited {done.returncode} (log {log}):\n{tail}", str(args[0]))
    return seconds


def trained_steps(log: Path) -> int | None:
    """Steps the run reached, from the checkpoint `nanoinspect train` last names in LOG."""
    found = re.findall(r"step_(\d+)\.pt", log.read_text(errors="replace"))
    return int(found[-1]) if found else None


def code_version() -> str:
    """Short commit of HEAD, with '+dirty' when models/, training/ or service/ differ from it
    (other people share this working tree: the measured code may not be the commit)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_DIRS)
    return commit + ("+dirty" if dirty else "")


def stamp() -> dict:
    """Who measured what, where: goes into every record."""
    return {
        "code": code_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "load_1min": round(os.getloadavg()[0], 2),
    }


def detector_speed(model: Path, images: Sequence[Path], batch: int = 8) -> dict:
    """Images/s of `Detector.score` (batches of `batch`, masks and regions included, decoding
    excluded) over IMAGES, after one warm-up batch; on CUDA when this machine has a GPU."""
    from models.detector import Detector
    from models.images import load_image

    gpu = Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None
    det = Detector(model, providers=("cuda", "cpu") if gpu else ("cpu",))
    crop = det.meta.crop_bottom
    pixels = [load_image(p, crop_bottom=crop).pixels for p in images]
    det.score(pixels[:batch])
    began = time.perf_counter()
    for k in range(0, len(pixels), batch):
        det.score(pixels[k : k + batch])
    seconds = time.perf_counter() - began
    return {"images_per_s": len(pixels) / seconds, "provider": det.provider, "batch": batch}


def override_flips(model: Path, normals: Sequence[Path]) -> dict:
    """How many NORMALS change their decision when alpha or sigma is overridden: each
    calibrated alpha at the model's sigma, each calibrated sigma at its alpha, and one pair
    off the grid (an override draws the map; the verdict should stay the model's)."""
    from models.detector import Detector
    from models.images import load_image

    det = Detector(model, providers=("cpu",))
    pixels = [load_image(p, crop_bottom=det.meta.crop_bottom).pixels for p in normals]
    own, *table = det.meta.calibrated_settings()  # the model's own pair first: that is base
    others = [(a, s) for a, s in table if own[0] == a or own[1] == s] + [(0.3, 3.0)]
    base = [r.is_anomalous for r in det.score(pixels)]
    flipped: set[int] = set()
    for alpha, sigma in others:
        found = det.score(pixels, alpha=alpha, sigma=sigma)
        flipped |= {i for i, r in enumerate(found) if r.is_anomalous != base[i]}
    return {"normals": len(pixels), "flipped": len(flipped), "settings": 1 + len(others)}


def budget_args(max_minutes: float | None, max_steps: int | None) -> list[str]:
    """Train flags passed only when the user gave them: otherwise the recipe's own budget."""
    args: list[str] = []
    if max_minutes is not None:
        args += ["--max-minutes", str(max_minutes)]
    if max_steps is not None:
        args += ["--max-steps", str(max_steps)]
    return args


def budget_text(max_minutes: float | None, max_steps: int | None) -> str:
    parts = [] if max_minutes is None else [f"{max_minutes:g} min"]
    parts += [] if max_steps is None else [f"{max_steps} steps"]
    return ", ".join(parts) or "default"


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table, readable as plain text too."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def read_metrics(report: Path) -> dict:
    return json.loads((report / "metrics.json").read_text())


def unit(value: object) -> float | None:
    """A metric as a float, NaN (undefined, e.g. one class) as None: JSON has no NaN."""
    if value is None:
        return None
    v = float(value)  # type: ignore[arg-type]
    return None if math.isnan(v) else v


def files(folder: Path) -> list[Path]:
    from models.images import IMAGE_EXTENSIONS

    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def write_record(out: Path, stem: str, record: dict, markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown.rstrip() + "\n")
