"""`make quality`: the synthetic domain matrix, and `make quality-real`: the PAN SEM set.

For each domain: draw normals to train on (seed 0) and a labelled test set (seed 1) with
`nanoinspect synth`, then `train`, `export` with no labelled data (the label-free path a
user without defect samples takes) and `evaluate`, all through the CLI. A benchmark, not a
test: nothing here asserts a quality threshold."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from training import ablation
from training.quality_run import (
    ROOT,
    StepFailed,
    budget_args,
    budget_text,
    detector_speed,
    duration,
    files,
    fmt,
    override_flips,
    read_metrics,
    run_step,
    stamp,
    table,
    trained_steps,
    unit,
    write_record,
)

SEED_TRAIN, SEED_TEST = 0, 1
COLUMNS = (  # (metrics.json key, column)
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC"),
    ("aupro", "AUPRO@0.3"),
    ("pixel_f1", "pixel F1"),
)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


def domains() -> dict[str, str]:
    """Domain name -> one-line summary; only `classic` (today's look) before training.domains."""
    try:
        from training.domains import DOMAINS
    except ModuleNotFoundError as e:
        if e.name != "training.domains":
            raise
        return {"classic": "the original synth look (no domains module yet)"}
    return {name: d.summary for name, d in DOMAINS.items()}


def _domain_flag(name: str) -> list[str]:
    """`--domain NAME`, left out for synth's default domain (same images, and it works with
    a synth that predates domains)."""
    try:
        from training.domains import DEFAULT_DOMAIN
    except ModuleNotFoundError:
        DEFAULT_DOMAIN = "classic"
    return [] if name == DEFAULT_DOMAIN else ["--domain", name]


def _generator_digest() -> str:
    """Changes when the generator's code does, so a stale drawn data set is redrawn."""
    h = hashlib.sha256()
    for p in sorted((ROOT / "training").glob("*.py")):
        if p.name.startswith(("synth", "domain")):
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def _draw(out: Path, args: list[str], log: Path) -> None:
    """`nanoinspect synth OUT ARGS`, skipped when OUT was drawn with the same arguments by the
    same generator code (synth is deterministic by seed)."""
    key = {"args": args, "generator": _generator_digest()}
    done = out.parent / f"{out.name}.drawn.json"
    if out.is_dir() and done.is_file() and json.loads(done.read_text()) == key:
        print(f"  reusing {out}")
        return
    done.unlink(missing_ok=True)
    run_step(["synth", out, *args], log)
    done.write_text(json.dumps(key) + "\n")


def run_domain(name: str, work: Path, settings: dict, train_flags: list[str]) -> dict:
    """One row of the matrix: draw, train, export label-free, evaluate, time the Detector."""
    d, logs = work / name, work / name / "logs"
    common = ["--size", settings["size"], *_domain_flag(name)]
    n_good, n_per = str(settings["n_test_good"]), str(settings["n_test_per_defect"])
    train_args = [*common, "--n-train", str(settings["n_train"]), "--n-test-good", "0"]
    train_args += ["--n-test-per-defect", "0", "--seed", str(SEED_TRAIN), "--no-sheet"]
    # one train image: evaluate wants a complete MVTec layout; it is never used
    test_args = [*common, "--n-train", "1", "--n-test-good", n_good]
    test_args += ["--n-test-per-defect", n_per, "--seed", str(SEED_TEST)]
    _draw(d / "train", train_args, logs / "synth-train.log")
    _draw(d / "test", test_args, logs / "synth-test.log")
    run, model, report = d / "run", d / "model.onnx", d / "report"
    shutil.rmtree(run, ignore_errors=True)  # always retrain
    shutil.rmtree(report, ignore_errors=True)
    model.unlink(missing_ok=True)
    train_s = run_step(["train", d / "train", "--out", run, *train_flags], logs / "train.log")
    views = ["--views", str(settings.get("views", 1))]
    run_step(["export", run, "--out", model, *views], logs / "export.log")
    run_step(["evaluate", model, d / "test", "--out", report], logs / "evaluate.log")
    m = read_metrics(report)
    found = ablation.run(model, run, d / "test", d / "ablation")
    row_ablation = {f: {k: unit(m.get(k)) for k in ablation.METRICS} for f, m in found.items()}
    tests = [p for kind in sorted((d / "test" / "test").iterdir()) for p in files(kind)]
    speed = detector_speed(model, tests)
    row = {key: unit(m.get(key)) for key, _ in COLUMNS}
    row["per_type"] = {
        t: {k: unit(v.get(k)) for k in ("pixel_auroc", "aupro", "image_auroc")}
        for t, v in m.get("per_type", {}).items()
    }
    row |= {"train_seconds": round(train_s, 1), "train_steps": trained_steps(logs / "train.log")}
    row["images_per_s"] = round(speed["images_per_s"], 2)
    row["speed"] = speed | {"what": "Detector.score on the test images after evaluate"}
    row["overrides"] = override_flips(model, files(d / "test" / "test" / "good"))
    row["model"] = m.get("model")
    row["ablation"] = row_ablation
    return row


def _train_text(row: dict) -> str:
    steps = row.get("train_steps")
    return duration(row["train_seconds"]) + ("" if steps is None else f", {steps} steps")


def _overrides_text(o: dict | None) -> str:
    if o is None:
        return "n/a"
    return f"{o['flipped']} of {o['normals']} flip ({o['settings']} settings)"


def _settings_text(s: dict) -> str:
    return (
        (
            f"{s['size']}, {s['n_train']} train, "
            f"{s['n_test_good']} good + {s['n_test_per_defect']}/type test"
        )
        + (f", training seed {s['train_seed']}" if s.get("train_seed") else "")
        + (f", {s['views']} views" if s.get("views", 1) > 1 else "")
    )


def matrix_markdown(rows: dict[str, dict], summaries: dict[str, str]) -> str:
    """The main table and the per-defect-type table, one row per domain."""
    from training.synth import DEFECTS

    main, types, families = [], [], []
    kinds = sorted(
        {k for row in rows.values() for k in row.get("per_type", {})},
        key=lambda k: (DEFECTS.index(k) if k in DEFECTS else len(DEFECTS), k),
    )
    for name, row in rows.items():
        if "error" in row:
            main.append([name, f"failed in `{row['failed_step']}`", *[""] * 9])
            continue
        main.append(
            [
                name,
                *(fmt(row[k]) for k, _ in COLUMNS),
                _train_text(row),
                f"{row['images_per_s']:.2f}",
                _overrides_text(row.get("overrides")),
                row["budget"],
                _settings_text(row["settings"]),
                f"`{row['code']}`",
            ]
        )
        per = row["per_type"]
        cells = [
            f"{fmt(per[k]['pixel_auroc'])} / {fmt(per[k]['aupro'])}" if k in per else ""
            for k in kinds
        ]
        types.append([name, *cells])
        chosen = " / ".join(fmt(row[k]) for k in ablation.METRICS)
        alone = [
            " / ".join(fmt(row["ablation"][f][k]) for k in ablation.METRICS)
            if f in row.get("ablation", {})
            else ""
            for f in ablation.FAMILIES
        ]
        families.append([name, *alone, chosen])
    header = ["domain", *(c for _, c in COLUMNS), "train", "images/s", "overrides", "budget"]
    header += ["data", "code"]
    parts = [table(header, main)]
    if types:
        parts += ["Per defect type, pixel AUROC / AUPRO@0.3:", table(["domain", *kinds], types)]
    if families:
        parts += [
            "The same trained models scored by the formula's map alone (w = 1, 0, 0, 0 at "
            "the self-check's alpha), by its terms d (alpha 1) and r (alpha 0) alone, by "
            "the hand-made terms alone (w_0 = 0) and by the shipped mix; image AUROC / "
            "pixel AUROC / AUPRO@0.3:",
            table(["domain", "formula", "d", "r", "hand-made", "shipped mix"], families),
        ]
    listed = "\n".join(f"- `{n}`: {summaries.get(n, '(no longer a domain)')}" for n in rows)
    return "\n\n".join([*parts, "Domains:\n\n" + listed])


ABOUT = (
    "Per domain: train on normals drawn by `nanoinspect synth --domain D --seed 0`, "
    "`nanoinspect export` with no labelled data (calibrated on the run's held-out normals), "
    "`nanoinspect evaluate` on a labelled test set drawn with `--seed 1`. train: wall clock "
    "of `nanoinspect train`, and the steps it reached. images/s: `Detector.score` (batches "
    "of 8, masks and regions included, decoding excluded) on the test images, measured after "
    "evaluate. overrides: normal test images whose decision changes when alpha and sigma "
    "are overridden to any pair the model's threshold table calibrates. "
    "code: the commit measured (+dirty: models/, training/ or service/ had "
    "uncommitted edits)."
)


def _save_matrix(out: Path, rows: dict[str, dict], known: dict[str, str]) -> dict:
    """Write OUT/matrix.md and .json: ROWS, and the previous record's other domains."""
    previous = {}
    if (out / "matrix.json").is_file():
        previous = json.loads((out / "matrix.json").read_text()).get("domains", {})
    merged = {n: rows.get(n) or previous[n] for n in known if n in rows or n in previous}
    text = f"# Domain matrix\n\n{ABOUT}\n\n" + matrix_markdown(merged, known)
    write_record(out, "matrix", {"about": ABOUT, "domains": merged}, text)
    return merged


def _size(text: str) -> str:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected WIDTHxHEIGHT, e.g. 1024x704, not {text!r}") from None
    return f"{w}x{h}"


@app.command()
def matrix(
    domains_: Annotated[
        str | None, typer.Option("--domains", help="comma-separated (default: every domain)")
    ] = None,
    size: Annotated[str, typer.Option(help="WIDTHxHEIGHT", callback=_size)] = "1024x704",
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_per_defect: int = 10,
    max_minutes: Annotated[float | None, typer.Option(help="passed to train")] = None,
    max_steps: Annotated[int | None, typer.Option(help="passed to train")] = None,
    train_seed: Annotated[
        int, typer.Option(help="train's --seed: another draw of weights, patches and holdout")
    ] = 0,
    views: Annotated[int, typer.Option(help="export's --views: flips the maps average")] = 1,
    work: Path = Path("quality/work"),
    out: Path = Path("quality"),
):
    """Train, export label-free and evaluate on every synthetic domain; write OUT/matrix.md
    and .json (rows of domains not run this time are kept from the previous record). One
    training seed measures one draw: compare variants over several (--train-seed)."""
    known = domains()
    names = [n.strip() for n in domains_.split(",") if n.strip()] if domains_ else list(known)
    if bad := [n for n in names if n not in known]:
        typer.echo(f"error: unknown domain {bad[0]!r}; known: {', '.join(known)}", err=True)
        raise typer.Exit(2)
    settings = {
        "size": size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_per_defect": n_test_per_defect,
        "train_seed": train_seed,
        "views": views,
    }
    flags = [*budget_args(max_minutes, max_steps), "--seed", str(train_seed)]
    rows: dict[str, dict] = {}
    merged: dict[str, dict] = {}
    for name in names:
        print(f"[{name}] {known[name]}", flush=True)
        base = {"budget": budget_text(max_minutes, max_steps), "settings": settings} | stamp()
        try:
            rows[name] = base | run_domain(name, work.resolve(), settings, flags)
        except StepFailed as e:
            print(f"[{name}] FAILED: {e}", file=sys.stderr, flush=True)
            rows[name] = base | {"error": str(e), "failed_step": e.step}
        merged = _save_matrix(out, rows, known)  # after each domain: a killed run keeps them
    print("\n" + matrix_markdown(rows, known))
    print(f"\nwrote {out / 'matrix.md'} and {out / 'matrix.json'} ({len(merged)} domains)")
    if any("error" in r for r in rows.values()):
        raise typer.Exit(1)


@app.command()
def real(
    data: Annotated[Path, typer.Argument(help="the PAN set's folder or its bare git mirror")],
    dev: Annotated[
        bool, typer.Option(help="train and test inside TrainingDataset, split by source image")
    ] = False,
    max_minutes: Annotated[float | None, typer.Option(help="passed to train")] = None,
    max_steps: Annotated[int | None, typer.Option(help="passed to train")] = None,
    n_train: Annotated[
        int | None, typer.Option(help="normals to train on, spread evenly over sources")
    ] = None,
    n_test: Annotated[
        int | None, typer.Option(help="at most this many test images per class, as n-train")
    ] = None,
    work: Annotated[Path | None, typer.Option(help="default quality/work/real[-dev]")] = None,
    out: Path = Path("quality"),
):
    """Train on the real PAN set's normal images, export label-free, and print image AUROC of
    Defective and of SlightlyDefective against NonDefective; write OUT/real[-dev].md/.json."""
    from models.errors import NanoinspectError
    from training.quality_real import run_real

    work = work or Path("quality/work") / ("real-dev" if dev else "real")
    try:
        run_real(data, dev, work.resolve(), out, max_minutes, max_steps, n_train, n_test)
    except (StepFailed, NanoinspectError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


if __name__ == "__main__":
    app()
