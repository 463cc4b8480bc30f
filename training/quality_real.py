"""`make quality-real`: the public PAN nanofibre SEM set (Yardimci & Ersoy, The Visual
Computer 2025; github.com/cagriyardimci/Nanofiber_SEM_Dataset), image labels only.

Its files are `translated_<source>_<k>.tif`: translated copies of a few source images, so
the `--dev` split (inside TrainingDataset) is by source, never by file: a copy of a source
trained on is never tested. Nothing of the set is copied: the layout is symlinks."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from models.errors import DataError
from training import ablation
from training.quality_run import (
    budget_args,
    budget_text,
    duration,
    files,
    fmt,
    read_metrics,
    run_step,
    stamp,
    table,
    trained_steps,
    unit,
    write_record,
)

CLASSES = {  # layout kind -> the set's folder
    "good": "NonDefective",
    "slightly_defective": "SlightlyDefective",
    "defective": "Defective",
}
SETS = ("TrainingDataset", "TestDataset")
_NAME = re.compile(r"^translated_(?P<source>.+)_(?P<k>\d+)$")


def source_of(path: Path) -> str:
    """The source image a file was translated from; a name off the pattern is its own source."""
    match = _NAME.match(path.stem)
    return match["source"] if match else path.stem


def _is_git_dir(path: Path) -> bool:
    """A git directory with a commit (a mirror may lack the config that calls it bare)."""
    done = subprocess.run(
        ["git", f"--git-dir={path}", "rev-parse", "--verify", "--quiet", "HEAD^{commit}"],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def pan_root(data: Path, work: Path) -> Path:
    """The folder holding TrainingDataset/ and TestDataset/: DATA itself, or, for a bare git
    mirror, WORK/pan, extracted from its HEAD once (again only when HEAD changes)."""
    if all((data / s).is_dir() for s in SETS):
        return data
    if not data.is_dir() or not _is_git_dir(data):
        raise DataError(
            f"{data}: neither the PAN set's folder (with {' and '.join(SETS)}/) "
            "nor a bare git mirror of it"
        )
    git = ["git", f"--git-dir={data}"]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    dest, done = work / "pan", work / "pan.extracted"
    if done.is_file() and done.read_text().strip() == head.stdout.strip() and dest.is_dir():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    print(f"  extracting {data} (HEAD {head.stdout.strip()[:12]}) into {dest}", flush=True)
    with subprocess.Popen([*git, "archive", "HEAD", *SETS], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            archive.extractall(dest, filter="data")
    if proc.returncode != 0 or not all((dest / s).is_dir() for s in SETS):
        raise DataError(f"{data}: `git archive HEAD {' '.join(SETS)}` failed")
    done.write_text(head.stdout)
    return dest


def spread(paths: list[Path], n: int | None) -> list[Path]:
    """At most n of PATHS, shared as evenly as possible between sources and evenly spaced
    within each; sorted. None keeps all."""
    if n is None or n >= len(paths):
        return sorted(paths)
    by_source: dict[str, list[Path]] = {}
    for p in sorted(paths):
        by_source.setdefault(source_of(p), []).append(p)
    quota = dict.fromkeys(by_source, 0)
    left = n
    while left:  # one more to every source that has one to give, in turn
        for s, members in by_source.items():
            if left and quota[s] < len(members):
                quota[s] += 1
                left -= 1
    picked = []
    for s, members in by_source.items():
        if q := quota[s]:
            step = len(members) / q
            picked += [members[int(i * step)] for i in range(q)]
    return sorted(picked)


def held_out_sources(sources: list[str]) -> set[str]:
    """A deterministic third of the sources (at least one, never all), by hash of name."""
    if len(sources) < 2:
        raise DataError(f"--dev needs at least 2 NonDefective sources, found {len(sources)}")
    n = min(len(sources) - 1, max(1, round(len(sources) / 3)))
    return set(sorted(sources, key=lambda s: hashlib.sha256(s.encode()).hexdigest())[:n])


@dataclass(frozen=True)
class Split:
    train: list[Path]  # normal images to train on
    test: dict[str, list[Path]]  # layout kind -> images
    held_out: list[str]  # --dev: the NonDefective sources tested, never trained on


def split(root: Path, dev: bool, n_train: int | None, n_test: int | None) -> Split:
    """Train normals and test images: TrainingDataset / TestDataset, or with dev a split of
    TrainingDataset by source."""
    train_dir = root / "TrainingDataset"
    normals = files(train_dir / CLASSES["good"])
    held: set[str] = set()
    if dev:
        held = held_out_sources(sorted({source_of(p) for p in normals}))
        test = {k: files(train_dir / f) for k, f in CLASSES.items() if k != "good"}
        test["good"] = [p for p in normals if source_of(p) in held]
        normals = [p for p in normals if source_of(p) not in held]
        trained = {source_of(p) for p in normals}  # a copy of a trained source is not a test
        test = {k: [p for p in v if source_of(p) not in trained] for k, v in test.items()}
    else:
        test = {k: files(root / "TestDataset" / f) for k, f in CLASSES.items()}
    if not normals or not all(test.values()):
        raise DataError(f"{root}: a class folder of the PAN set is empty or missing")
    test = {k: spread(test[k], n_test) for k in CLASSES}
    return Split(spread(normals, n_train), test, sorted(held))


def build_layout(s: Split, dest: Path) -> Path:
    """An MVTec-like layout of symlinks: train/good, test/<kind>; no ground_truth (image
    labels only, so evaluate gives image metrics)."""
    shutil.rmtree(dest, ignore_errors=True)
    for kind, paths in [("train/good", s.train)] + [(f"test/{k}", v) for k, v in s.test.items()]:
        folder = dest / kind
        folder.mkdir(parents=True)
        for p in paths:
            (folder / p.name).symlink_to(p.resolve())
    return dest


def run_real(
    data: Path,
    dev: bool,
    work: Path,
    out: Path,
    max_minutes: float | None,
    max_steps: int | None,
    n_train: int | None,
    n_test: int | None,
) -> dict:
    """Train on the normals (a folder of them alone: export cannot see a test label),
    export label-free, evaluate; print and write the record."""
    root = pan_root(data, work)
    s = split(root, dev, n_train, n_test)
    layout = build_layout(s, work / "layout")
    run, model, report, logs = work / "run", work / "model.onnx", work / "report", work / "logs"
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(report, ignore_errors=True)
    model.unlink(missing_ok=True)
    flags = budget_args(max_minutes, max_steps)
    train_s = run_step(
        ["train", layout / "train" / "good", "--out", run, *flags], logs / "train.log"
    )
    run_step(["export", run, "--out", model], logs / "export.log")
    run_step(["evaluate", model, layout, "--out", report], logs / "evaluate.log")
    m = read_metrics(report)
    per = m.get("per_type", {})
    families = {
        family: {k: unit(v.get("image_auroc")) for k, v in fm.get("per_type", {}).items()}
        for family, fm in ablation.run(model, run, layout, work / "ablation").items()
    }
    record = {
        "set": "TrainingDataset split by source (--dev)" if dev else "TestDataset",
        "defective_vs_non": unit(per.get("defective", {}).get("image_auroc")),
        "slightly_vs_non": unit(per.get("slightly_defective", {}).get("image_auroc")),
        "image_auroc_all": unit(m.get("image_auroc")),
        "families": families,
        "train_images": len(s.train),
        "train_sources": len({source_of(p) for p in s.train}),
        "test_images": {k: len(v) for k, v in s.test.items()},
        "held_out_sources": s.held_out,
        "train_seconds": round(train_s, 1),
        "train_steps": trained_steps(logs / "train.log"),
        "budget": budget_text(max_minutes, max_steps),
        "n_train": n_train,
        "n_test": n_test,
        "model": m.get("model"),
    } | stamp()
    text = real_markdown(record)
    write_record(out, "real-dev" if dev else "real", record, text)
    print("\n" + text)
    return record


def real_markdown(r: dict) -> str:
    t = r["test_images"]
    header = ["set", "Defective vs Non", "Slightly vs Non", "all defects vs Non"]
    header += ["train normals (sources)", "test normal / slightly / defective"]
    header += ["train", "budget", "code"]
    row = [r["set"], fmt(r["defective_vs_non"]), fmt(r["slightly_vs_non"])]
    row += [fmt(r["image_auroc_all"]), f"{r['train_images']} ({r['train_sources']})"]
    row += [f"{t['good']} / {t['slightly_defective']} / {t['defective']}"]
    steps = r.get("train_steps")
    trained = duration(r["train_seconds"]) + ("" if steps is None else f", {steps} steps")
    row += [trained, r["budget"], f"`{r['code']}`"]
    note = (
        "Image AUROC of the model's image decision (the score map's maximum away from the "
        "edge); trained on NonDefective images only, exported with no labelled data "
        "(calibrated on the run's held-out normals)."
    )
    families = r.get("families") or {}
    if families:
        note += " The same model scored by one family of terms alone (training/ablation.py): " + (
            "; ".join(
                f"{name} Defective {fmt(v.get('defective'))}, SlightlyDefective "
                f"{fmt(v.get('slightly_defective'))}"
                for name, v in families.items()
            )
            + "."
        )
    return f"# Real SEM: the PAN set\n\n{table(header, [row])}\n\n{note}"
