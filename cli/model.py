"""`nanoinspect export`, `calibrate` and `evaluate`: a run made into a calibrated ONNX model,
recalibrated, and measured on labelled images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from models.decision import IMAGE_FPR, PIXEL_FPR

if TYPE_CHECKING:
    from models.artifact import ArtifactMeta


def export(
    run: Path,
    out: Annotated[Path, typer.Option("--out", help="the .onnx file to write")],
    calibrate: Annotated[Path | None, typer.Option(help="data to calibrate on")] = None,
    name: str | None = None,
    alpha: Annotated[
        float | None, typer.Option(help="fix alpha (default: chosen on labelled data, else 0.5)")
    ] = None,
    views: Annotated[
        int,
        typer.Option(
            help="average the networks' maps over 1, 2 or 4 flips of each image: steadier "
            "maps, each view one more pass of the networks"
        ),
    ] = 1,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing --out")] = False,
) -> None:
    """Export a run to one ONNX file: parity-checked against torch, then calibrated. An
    existing file is kept unless --force."""
    from training.export import PARITY_ATOL, PARITY_RTOL
    from training.export import export as run_export

    meta, parity = run_export(
        run, out, data=calibrate, name=name, alpha=alpha, views=views, force=force
    )
    typer.echo(
        f"wrote {out}: parity passed, every output value within {PARITY_ATOL:g} + "
        f"{PARITY_RTOL:g} |torch| of torch (largest |ort - torch| {parity:.2e})"
    )
    _report_calibration(meta)


def _report_calibration(meta: ArtifactMeta) -> None:
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


def calibrate(
    model: Path,
    data: Path,
    alpha: float | None = None,
    sigma: float | None = None,
    min_area: int | None = None,
    pixel_fpr: float = PIXEL_FPR,
    image_fpr: float = IMAGE_FPR,
) -> None:
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


def evaluate(
    model: Path,
    data: Path,
    out: Annotated[Path, typer.Option("--out", help="report directory")],
    save_maps: Annotated[
        Path | None, typer.Option(help="write DIR/<type>/<name>.npy score maps")
    ] = None,
    alpha: float | None = None,
) -> None:
    """Metrics (image/pixel AUROC, AUPRO, F1, IoU) and an HTML report on a labelled test set."""
    from training.evaluate import evaluate as run_evaluate

    result = run_evaluate(model, data, out, save_maps=save_maps, alpha=alpha)
    keys = ("image_auroc", "pixel_auroc", "aupro", "pixel_f1", "pixel_iou")
    shown = {k: result[k] for k in keys if k in result}
    typer.echo(json.dumps({k: v if v is None else round(v, 4) for k, v in shown.items()}))
    typer.echo(f"report {out / 'report.html'}")
