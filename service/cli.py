"""`nanoinspect`: one command, one subcommand per job. Each imports only what it needs, so
the serving side runs without torch. User mistakes end as one line on stderr, exit 2."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated

import typer

from models.errors import NanoinspectError

app = typer.Typer(
    help="Find defects in SEM images of nanofibre mats.",
    rich_markup_mode=None,  # plain click help: rich cuts option names at 80 columns
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def one_line_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NanoinspectError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(getattr(e, "exit_code", 2)) from None

    return wrapper


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected WIDTHxHEIGHT, e.g. 256x256, not {text!r}") from None
    return w, h


@app.command()
@one_line_errors
def synth(
    out: Annotated[Path | None, typer.Argument(help="folder to write")] = None,
    n_train: int = 200,
    n_test_good: int = 20,
    n_test_per_defect: int = 10,
    size: Annotated[str, typer.Option(help="WIDTHxHEIGHT")] = "256x256",
    seed: int = 0,
    banner: Annotated[bool, typer.Option(help="draw an SEM info banner at the bottom")] = False,
    sheet: Annotated[bool, typer.Option(help="also write OUT/contact_sheet.png")] = True,
    domain: Annotated[
        str | None, typer.Option(help="the look of the mats (default classic); see --list-domains")
    ] = None,
    defects: Annotated[
        str | None, typer.Option(help="comma-separated defect types (default: the domain's)")
    ] = None,
    list_domains: Annotated[
        bool, typer.Option("--list-domains", help="print the domains, one line each, and exit")
    ] = False,
):
    """Draw a synthetic SEM nanofibre data set with defects (MVTec AD layout)."""
    from models.errors import DataError
    from training.domains import DEFAULT_DOMAIN, DOMAINS, get_domain

    if list_domains:
        wide = max(map(len, DOMAINS))
        for d in DOMAINS.values():
            typer.echo(f"{d.name:<{wide}}  {d.summary}")
        return
    dom = get_domain(domain or DEFAULT_DOMAIN)  # an unknown name fails before any work
    if out is None:
        raise DataError("missing OUT, the folder to write (or use --list-domains)")
    from training.synth import contact_sheet, write_dataset

    counts = write_dataset(
        out,
        n_train=n_train,
        n_test_good=n_test_good,
        n_test_per_defect=n_test_per_defect,
        size=_size(size),
        seed=seed,
        banner=banner,
        defects=[d.strip() for d in defects.split(",")] if defects else None,
        domain=dom,
    )
    if sheet:
        contact_sheet(out, out / "contact_sheet.png")
    typer.echo(f"wrote {out}: {json.dumps(counts)}")


BUDGET = ("max_steps", "max_minutes")  # a resumed run may change these, nothing else


def _resume_differences(out: Path, config: Path | None, seed: int | None, model_cfg, cfg) -> None:
    """Refuse --resume with a --config or --seed other than the run's, naming what differs
    (a resumed run keeps its settings; silently ignoring the new ones would mislead)."""
    from dataclasses import asdict

    saved_file = out / "config.json"
    if not saved_file.is_file() or (config is None and seed is None):
        return
    saved = json.loads(saved_file.read_text())
    diffs = [] if seed is None or seed == saved["seed"] else [f"seed {saved['seed']} -> {seed}"]
    if config is not None:
        for section, now in (("model", asdict(model_cfg)), ("train", asdict(cfg))):
            diffs += [
                f"{section}.{k} {saved[section].get(k)!r} -> {v!r}"
                for k, v in now.items()
                if k not in BUDGET and saved[section].get(k) != v
            ]
    if diffs:
        raise NanoinspectError(
            f"--resume: {out} was started with other settings ({'; '.join(diffs)}): resume "
            "with the run's own (only --max-steps and --max-minutes may change), or choose "
            "another --out"
        )


def _warn_not_normal(data: Path) -> None:
    """Name the subfolders of a training folder that look like test or defective images."""
    from training.data import find_dataset, not_normal_folders

    suspect = not_normal_folders(find_dataset(data, need_train=False))
    if suspect:
        typer.echo(
            f"warning: {data} has subfolders that look like test or defective images, and "
            f"every image in them is trained on as normal: {', '.join(suspect)}",
            err=True,
        )


@app.command()
@one_line_errors
def train(
    data: Path,
    out: Annotated[Path, typer.Option("--out", help="run directory")],
    config: Annotated[
        Path | None, typer.Option(help="TOML or JSON with sections model and train")
    ] = None,
    max_steps: int | None = None,
    max_minutes: Annotated[
        float | None, typer.Option(help="training budget in minutes (default: the config's, 10)")
    ] = None,
    device: str = "auto",
    seed: Annotated[int | None, typer.Option(help="random seed (default 0)")] = None,
    resume: bool = False,
    allow_data_change: Annotated[
        bool, typer.Option("--allow-data-change", help="--resume on other data than the run's")
    ] = False,
):
    """Fit the BiGAN on normal images (runs under torchrun for several processes).
    SIGTERM or ^C writes a checkpoint first; --resume continues from it."""
    from dataclasses import replace

    from training.config import load_config
    from training.signals import StopSignals, TrainingInterrupted
    from training.train import train as fit

    model_cfg, cfg = load_config(config)
    if resume:
        _resume_differences(out, config, seed, model_cfg, cfg)
    if max_steps is not None:
        cfg = replace(cfg, max_steps=max_steps)
    if max_minutes is not None:
        cfg = replace(cfg, max_minutes=max_minutes)
    if cfg.max_steps <= 0 or cfg.max_minutes <= 0:
        raise NanoinspectError(
            f"the budget must be positive: --max-steps {cfg.max_steps}, --max-minutes "
            f"{cfg.max_minutes:g} would train nothing"
        )
    _warn_not_normal(data)
    with StopSignals() as stop:
        path = fit(
            data,
            out,
            model_cfg,
            cfg,
            seed=seed or 0,
            device=device,
            resume=resume,
            allow_data_change=allow_data_change,
            stop=stop,
        )
    if stop.received is not None:
        import signal

        name = signal.Signals(stop.received).name
        raise TrainingInterrupted(
            f"{name}: stopped with checkpoint {path}; continue with --resume", stop.received
        )
    typer.echo(f"checkpoint {path}; best by the self-check: {out / 'best.pt'}")


@app.command()
@one_line_errors
def export(
    run: Path,
    out: Annotated[Path, typer.Option("--out", help="the .onnx file to write")],
    calibrate: Annotated[Path | None, typer.Option(help="data to calibrate on")] = None,
    name: str | None = None,
    alpha: Annotated[
        float | None, typer.Option(help="fix alpha (default: chosen on labelled data, else 0.5)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing --out")] = False,
):
    """Export a run to one ONNX file: parity-checked against torch, then calibrated. An
    existing file is kept unless --force."""
    from training.export import PARITY_ATOL, PARITY_RTOL
    from training.export import export as run_export

    meta, parity = run_export(run, out, data=calibrate, name=name, alpha=alpha, force=force)
    typer.echo(
        f"wrote {out}: parity passed, every output value within {PARITY_ATOL:g} + "
        f"{PARITY_RTOL:g} |torch| of torch (largest |ort - torch| {parity:.2e})"
    )
    _report_calibration(meta)


def _report_calibration(meta) -> None:
    """What calibration chose and how the self-check went, and a warning no one can miss
    when the model cannot find its own synthetic defects."""
    cal = meta.calibration
    check = cal["check"]
    typer.echo(
        f"chosen on {cal['chosen_on']}: alpha {meta.alpha:g}, sigma {meta.sigma:g}, "
        f"weights (bigan, features, statistics, bodies) {tuple(meta.term_weights)}; "
        f"pixel AUROC {check['pixel_auroc']:.3f}, AUPRO {check['aupro']:.3f}, "
        f"image AUROC {check['image_auroc']:.3f} on {check['images']} images"
    )
    if not check.get("meaningful", True):
        typer.secho(
            f"note: the self-check ran on {cal['normal_images']} held-out normal images, fewer "
            f"than {check['min_normals']}: its figures are not meaningful and pass/fail is "
            "unknown. Add normal images (or pass labelled defects to calibrate).",
            err=True,
            fg="yellow",
        )
    elif not check["passed"]:
        typer.secho(
            f"WARNING: the self-check finds its synthetic defects poorly (pixel AUROC "
            f"{check['pixel_auroc']:.3f} < {check['pass_pixel_auroc']}): this model may miss real "
            "defects. Train longer, on more normal images, or check the data.",
            err=True,
            fg="red",
            bold=True,
        )


@app.command()
@one_line_errors
def calibrate(
    model: Path,
    data: Path,
    alpha: float | None = None,
    sigma: float | None = None,
    min_area: int | None = None,
    pixel_fpr: float = 0.005,
    image_fpr: float = 0.05,
):
    """Recalibrate a model in place on DATA: its normals, with pasted synthetic defects or,
    if DATA has them, labelled defects (thresholds then at best F1). Bad values are refused
    before any work; the file is replaced only once the new calibration is complete."""
    from models.detector import Detector
    from training.calibrate import calibrate_in_place, check_settings
    from training.export import calibration_set

    settings = {
        "alpha": alpha,
        "sigma": sigma,
        "min_area": min_area,
        "pixel_fpr": pixel_fpr,
        "image_fpr": image_fpr,
    }
    meta = Detector(model, providers=("cpu",)).meta
    check_settings(**settings, sigma_max=meta.sigma_max)
    normals, labelled = calibration_set(data, meta.crop_bottom, None, meta.sample_bits)
    meta = calibrate_in_place(model, normals, labelled, **settings)
    typer.echo(f"wrote {model}")
    _report_calibration(meta)


@app.command()
@one_line_errors
def evaluate(
    model: Path,
    data: Path,
    out: Annotated[Path, typer.Option("--out", help="report directory")],
    save_maps: Annotated[
        Path | None, typer.Option(help="write DIR/<type>/<name>.npy score maps")
    ] = None,
    alpha: float | None = None,
):
    """Metrics (image/pixel AUROC, AUPRO, F1, IoU) and an HTML report on a labelled test set."""
    from training.evaluate import evaluate as run_evaluate

    result = run_evaluate(model, data, out, save_maps=save_maps, alpha=alpha)
    keys = ("image_auroc", "pixel_auroc", "aupro", "pixel_f1", "pixel_iou")
    shown = {k: result[k] for k in keys if k in result}
    typer.echo(json.dumps({k: v if v is None else round(v, 4) for k, v in shown.items()}))
    typer.echo(f"report {out / 'report.html'}")


@app.command()
@one_line_errors
def serve(
    model: Annotated[
        Path | None,
        typer.Argument(
            help="ONNX artifact (default: $NANOINSPECT_MODEL, else models/default.onnx)"
        ),
    ] = None,
    host: Annotated[str, typer.Option(envvar="NANOINSPECT_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="NANOINSPECT_PORT")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="processes, each with its own model")] = 1,
    providers: Annotated[
        str | None, typer.Option(help="e.g. cuda,cpu or tensorrt,cuda,cpu")
    ] = None,
    require_gpu: Annotated[
        bool | None, typer.Option("--require-gpu/--allow-cpu", help="refuse a CPU fallback")
    ] = None,
    fail_on_bad_model: Annotated[
        bool | None, typer.Option(help="exit if the model cannot be loaded (else /readyz is 503)")
    ] = None,
    log_format: Annotated[str | None, typer.Option(help="json or text")] = None,
):
    """Serve the REST API, metrics and web page; every setting also reads NANOINSPECT_*
    (API keys only from NANOINSPECT_API_KEYS, so they never show in a process list)."""
    import os

    from pydantic import ValidationError

    from service.observability import configure_logging
    from service.server import run
    from service.settings import Settings

    given = {
        "model": model,
        "providers": providers,
        "require_gpu": require_gpu,
        "fail_on_bad_model": fail_on_bad_model,
        "log_format": log_format,
    }
    for key, value in given.items():  # workers build their Settings from the environment
        if value is not None:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            os.environ[f"NANOINSPECT_{key.upper()}"] = text
    try:
        settings = Settings()
    except ValidationError as e:
        first = e.errors()[0]
        raise NanoinspectError(f"setting {first['loc'][0]}: {first['msg']}") from None
    configure_logging(settings.log_format, settings.log_level)
    if settings.fail_on_bad_model:
        _check_model(settings)
    run(host, port, workers)


def _check_model(settings) -> None:
    """--fail-on-bad-model: load the model once before the server starts, so a bad one ends
    as one line and exit 3 instead of a lifespan traceback from every worker."""
    from models.detector import Detector

    try:
        Detector(settings.model, providers=settings.providers, require_gpu=settings.require_gpu)
    except NanoinspectError as e:
        e.exit_code = 3
        raise


@app.command()
@one_line_errors
def score(
    model: Annotated[Path, typer.Argument(help="ONNX artifact")],
    inputs: Annotated[
        list[str], typer.Argument(help="image files, folders (searched recursively), globs")
    ],
    out: Annotated[Path, typer.Option("--out", help="results folder (resumable)")],
    batch_size: Annotated[int, typer.Option(min=1, help="images per inference call")] = 8,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="local: decoders (default min(4, CPUs)); ray: actors (1)"),
    ] = None,
    save_masks: Annotated[bool, typer.Option("--save-masks", help="OUT/masks/*.png")] = False,
    save_overlays: Annotated[
        bool, typer.Option("--save-overlays", help="OUT/overlays/*.png")
    ] = False,
    save_maps: Annotated[bool, typer.Option("--save-maps", help="OUT/maps/*.npy")] = False,
    engine: Annotated[str, typer.Option(help="local or ray")] = "local",
    providers: Annotated[
        str, typer.Option(envvar="NANOINSPECT_PROVIDERS", help="local: e.g. cuda,cpu or cpu")
    ] = "cuda,cpu",
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster (default: a local Ray instance)")
    ] = None,
    gpus_per_worker: Annotated[float, typer.Option(min=0, help="ray: GPUs per actor")] = 0.0,
    alpha: Annotated[float | None, typer.Option(help="override the model's alpha")] = None,
    image_threshold: Annotated[
        float | None, typer.Option(help="tau: anomalous when score > tau (default: calibrated)")
    ] = None,
    pixel_threshold: Annotated[
        float | None,
        typer.Option(help="gamma: the mask is score map > gamma (default: calibrated)"),
    ] = None,
    crop_bottom: Annotated[
        float | None,
        typer.Option(help="banner rows (>= 1) or fraction to drop (default: as in training)"),
    ] = None,
    decoder: Annotated[str, typer.Option(help="local: threads or processes")] = "threads",
    retry_errors: Annotated[
        bool, typer.Option("--retry-errors", help="rescore inputs whose row has an error")
    ] = False,
    part_rows: Annotated[int, typer.Option(min=1, hidden=True)] = 256,
    progress: bool = True,
):
    """Score many images into OUT/results.parquet and OUT/results.csv, one row per input.

    A killed run started again with the same arguments resumes where it stopped.
    Exit status: 0 all scored, 1 some inputs failed (see the error column), 2 usage error."""
    from service.batch.driver import run
    from service.batch.job import Job

    kinds = ("masks",) * save_masks + ("overlays",) * save_overlays + ("maps",) * save_maps
    job = Job(
        model=model,
        inputs=inputs,
        out=out,
        batch_size=batch_size,
        workers=workers,
        kinds=kinds,
        alpha=alpha,
        image_threshold=image_threshold,
        pixel_threshold=pixel_threshold,
        crop_bottom=crop_bottom,
        engine=engine,  # type: ignore[arg-type]
        providers=tuple(p.strip() for p in providers.split(",") if p.strip()),
        decoder=decoder,  # type: ignore[arg-type]
        ray_address=ray_address,
        gpus_per_worker=gpus_per_worker,
        retry_errors=retry_errors,
        part_rows=part_rows,
        progress=progress,
    )
    summary = run(job)
    for line in summary.errors:
        typer.echo(f"failed: {line}", err=True)
    typer.echo(str(summary))
    if summary.failed:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
