"""`nanoinspect score`: the batch job over many images into a resumable results table
(torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


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
) -> None:
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
