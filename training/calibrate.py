"""Calibration of an exported artifact, run on onnxruntime so it applies to any artifact.

1. Term scales: the means of raw d, r, f, t and b on held-out normal images, written into the
   graph's `*_scale` initializers, so every term averages 1 on normal data.
2. alpha, sigma and the term weights: chosen by pixel AUROC + AUPRO + image AUROC on
   labelled defects when given, else on the self-check (the held-out normals with pasted
   synthetic defects, training/selfcheck.py). Never a silent default.
3. gamma and tau: at target false-positive rates on the clean normal images, or at best F1
   when labelled defects are given. The image decision is the score map's peak away from the
   edge (models.decision).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from models.artifact import ArtifactMeta
from models.atomic import replacing
from models.decision import EDGE, IMAGE_FPR, PIXEL_FPR, image_decision
from models.detector import Detector
from models.errors import ArtifactError, DataError, NanoinspectError
from models.ood import NormalModel
from models.scale import resample, to_scale
from models.scoring import skipped_terms
from training import metrics, selfcheck
from training.selfcheck import Choice, Labelled

SCALES = ("d_scale", "r_scale", "f_scale", "t_scale", "b_scale")
CHECK_NORMALS = 12  # held-out normals the self-check pastes into (3 images each): enough to rank
# below this many held-out normals the self-check's figures are not meaningful: its set is 3
# pasted images per normal, and an AUROC over fewer than 15 images jumps by 0.07 per image
MIN_CHECK_NORMALS = 5
# the overrides the server has calibrated thresholds for (others get a note that they have not)
OVERRIDE_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
OVERRIDE_SIGMAS = (0.0, 1.0, 2.0, 4.0, 8.0)


def check_settings(
    *,
    alpha: float | None,
    sigma: float | None,
    min_area: int | None,
    pixel_fpr: float = PIXEL_FPR,
    image_fpr: float = IMAGE_FPR,
    sigma_max: float,
) -> None:
    """Refuse a value the runtime would refuse, before any work: a model calibrated with it
    could never serve."""
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise NanoinspectError(f"--alpha must lie in [0, 1], not {alpha:g}")
    if sigma is not None and not 0.0 <= sigma <= sigma_max:
        raise NanoinspectError(f"--sigma must lie in [0, {sigma_max:g}], not {sigma:g}")
    if min_area is not None and min_area < 0:
        raise NanoinspectError(f"--min-area must be >= 0 pixels, not {min_area}")
    for name, fpr in (("--pixel-fpr", pixel_fpr), ("--image-fpr", image_fpr)):
        if not 0.0 < fpr < 1.0:
            raise NanoinspectError(f"{name} must lie in (0, 1), not {fpr:g}")


def calibrate_in_place(
    path: Path, normals: list[np.ndarray], labelled: list[Labelled] = (), **settings
) -> ArtifactMeta:
    """calibrate() on a copy, which replaces path only once complete: a failure (or a kill)
    leaves the old model as it was."""
    with replacing(path) as (tmp,):
        shutil.copyfile(path, tmp)
        meta = calibrate(tmp, normals, labelled, **settings)
    return meta


def write_artifact(model: onnx.ModelProto, meta: ArtifactMeta, path: Path) -> None:
    """Set the scale and weight initializers and the metadata from meta, then replace path
    atomically. A term left out of the graph (models.scoring: no weight) has no scale."""
    values = {name: getattr(meta, name) for name in SCALES} | {"weights": meta.term_weights}
    inits = {i.name: i for i in model.graph.initializer if i.name in values}
    absent = set(values) - set(inits) - {f"{k}_scale" for k in skipped_terms(meta.term_weights)}
    if absent:
        raise ArtifactError(f"{path}: the graph lacks the calibration initializers {absent}")
    for name, init in inits.items():
        init.CopyFrom(numpy_helper.from_array(np.asarray(values[name], np.float32), name))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta.to_props())
    with replacing(path) as (tmp,):
        onnx.save(model, tmp)


def raw_terms(det: Detector, image: np.ndarray) -> dict[str, np.ndarray]:
    """d, r, f, t, b (H, W) of one image as the graph computes them, before any weighting."""
    maps = [f"{k}_map" for k in "dftb"]
    out = det.run(image[None, None], 1.0, 0.0, ("reconstruction", *maps))
    r = np.abs(out["reconstruction"][0, 0] - image) / det.meta.r_scale
    return {"r": r} | {name[0]: out[name][0, 0] for name in maps}


def _zoomed(sample: Labelled, scale: float) -> Labelled:
    image, zoom = to_scale(sample.image, scale)
    if zoom == 1.0:
        return sample
    return Labelled(image, resample(sample.mask.astype(np.float32), image.shape) > 0.5, sample.kind)


def _mix(choice: Choice, terms: dict[str, np.ndarray]) -> np.ndarray:
    return selfcheck.blur(selfcheck.mix(choice.weights, choice.alpha, terms), choice.sigma)


def families(tried: list[Choice]) -> dict[str, dict]:
    """The self-check's best choice with the formula alone (w = 1, 0, 0, 0), with each of
    its terms alone (d: alpha 1, r: alpha 0) and with the hand-made terms alone (w_0 = 0):
    what the ablation scores the same networks by."""
    formula = [c for c in tried if c.weights == (1.0, 0.0, 0.0, 0.0)]
    pick = {
        "formula": formula,
        "d": [c for c in formula if c.alpha == 1.0],
        "r": [c for c in formula if c.alpha == 0.0],
        "handmade": [c for c in tried if c.weights[0] == 0.0],
    }
    return {k: asdict(max(v, key=lambda c: c.quality)) for k, v in pick.items() if v}


def _blurred(x: np.ndarray, sigma: float) -> np.ndarray:
    return x if sigma == 0 else selfcheck.blur(x, sigma)


def override_thresholds(
    weights: tuple[float, ...],
    clean: list[dict[str, np.ndarray]],
    own: tuple[float, float, float, float],
    sigma_max: float,
) -> list[list[float]]:
    """[alpha, sigma, gamma, tau] per point of OVERRIDE_ALPHAS x OVERRIDE_SIGMAS (up to
    sigma_max) that stand where the model's own (alpha, sigma, gamma, tau) stands among the
    clean normals: gamma leaves the same share of normal pixels above it, tau lies as many
    standard deviations above the normals' mean score. So an override changes what is
    scored, not how strict the thresholds are, whichever way the own pair was chosen."""
    points = [(a, s) for s in OVERRIDE_SIGMAS if s <= sigma_max for a in OVERRIDE_ALPHAS]
    maps = _override_maps(weights, clean, [*points, own[:2]])
    pixels, scores = maps[own[:2]]
    share = max(float(np.mean(pixels > own[2])), 1 / pixels.size)
    z = (own[3] - scores.mean()) / max(float(scores.std()), 1e-12)
    table = []
    for alpha, sigma in points:
        pixels, scores = maps[(alpha, sigma)]
        gamma = float(np.quantile(pixels, 1 - share))
        table.append([alpha, sigma, gamma, float(scores.mean() + z * scores.std())])
    return table


def _override_maps(
    weights: tuple[float, ...], clean: list[dict[str, np.ndarray]], points: list[tuple]
) -> dict[tuple[float, float], tuple[np.ndarray, np.ndarray]]:
    """Per (alpha, sigma): the normals' pixels (one array) and image scores. Blurring is
    linear, so each term is blurred once per sigma and mixed per alpha."""
    out = {}
    for sigma in sorted({s for _, s in points}):
        blurred = [{k: _blurred(c[k], sigma) for k in selfcheck.TERMS} for c in clean]
        for alpha in sorted({a for a, s in points if s == sigma}):
            maps = [selfcheck.mix(weights, alpha, b) for b in blurred]
            pixels = np.concatenate([m.ravel() for m in maps])
            out[(alpha, sigma)] = pixels, np.array([image_decision(m) for m in maps])
    return out


def calibrate(
    path: Path,
    normals: list[np.ndarray],
    labelled: list[Labelled] = (),
    *,
    alpha: float | None = None,
    sigma: float | None = None,
    min_area: int | None = None,
    pixel_fpr: float = PIXEL_FPR,
    image_fpr: float = IMAGE_FPR,
    seed: int = 0,
) -> ArtifactMeta:
    """Calibrate the artifact at path, rewriting it (see calibrate_in_place for a model in
    use); returns its new metadata."""
    det = Detector(path, providers=("cpu",))
    check_settings(
        alpha=alpha,
        sigma=sigma,
        min_area=min_area,
        pixel_fpr=pixel_fpr,
        image_fpr=image_fpr,
        sigma_max=det.meta.sigma_max,
    )
    if not normals:
        raise DataError("calibration needs at least one held-out normal image")
    meta = det.meta.with_(min_area=det.meta.min_area if min_area is None else min_area)
    normals = [to_scale(img, meta.fibre_scale)[0] for img in normals]  # as the Detector sees them
    labelled = [_zoomed(s, meta.fibre_scale) for s in labelled]
    clean = [raw_terms(det, img) for img in normals]
    scales = {
        name: max(float(np.mean([c[k].mean(dtype=np.float64) for c in clean])), 1e-12)
        * getattr(meta, name)
        for k, name in zip(selfcheck.TERMS, SCALES, strict=True)
    }
    for c in clean:  # as the rescaled graph computes them
        for k, name in zip(selfcheck.TERMS, SCALES, strict=True):
            c[k] = c[k] * (getattr(meta, name) / scales[name])
    meta = meta.with_(**scales)
    write_artifact(onnx.load(path), meta, path)
    det = Detector(path, providers=("cpu",))

    check = list(labelled) or selfcheck.selfcheck_set(
        normals[:CHECK_NORMALS], seed, meta.fibre_scale
    )
    terms = [raw_terms(det, s.image) for s in check]
    best, tried = selfcheck.choose(
        terms,
        [s.mask for s in check],
        sigmas=selfcheck.SIGMAS if sigma is None else (sigma,),
        alphas=selfcheck.ALPHAS if alpha is None else (alpha,),
    )
    meaningful = bool(labelled) or len(normals) >= MIN_CHECK_NORMALS
    calibration: dict = {
        "normal_images": len(normals),
        "labelled_images": len(labelled),
        "chosen_on": "labelled defects" if labelled else "self-check (pasted synthetic defects)",
        "check": {
            "images": len(check),
            "pixel_auroc": best.pixel_auroc,
            "aupro": best.aupro,
            "image_auroc": best.image_auroc,
            # None: too few held-out normals to tell (meaningful false)
            "passed": best.passed if meaningful else None,
            "meaningful": meaningful,
            "min_normals": MIN_CHECK_NORMALS,
            "pass_pixel_auroc": selfcheck.PASS_PIXEL_AUROC,
        },
        "candidates": len(tried),
        "families": families(tried),
        "decision": f"max of the score map, {EDGE} px edge band left out",
    }
    if labelled:
        maps = [_mix(best, t) for t in terms]
        masks = [s.mask for s in check]
        labels = np.array([s.kind != "good" for s in check])
        gamma, pixel_f1 = metrics.best_f1_threshold(
            np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps])
        )
        tau, image_f1 = metrics.best_f1_threshold(
            labels, np.array([image_decision(m) for m in maps])
        )
        calibration |= {"method": "best_f1", "pixel_f1": pixel_f1, "image_f1": image_f1}
    else:
        maps = [_mix(best, t) for t in clean]
        gamma = float(np.quantile(np.concatenate([m.ravel() for m in maps]), 1 - pixel_fpr))
        tau = float(np.quantile([image_decision(m) for m in maps], 1 - image_fpr, method="higher"))
        calibration |= {"method": "target_fpr", "pixel_fpr": pixel_fpr, "image_fpr": image_fpr}
    calibration["at"] = datetime.now(UTC).isoformat(timespec="seconds")
    calibration["override_thresholds"] = (
        "per (alpha, sigma): the share of normal pixels above gamma and tau's standing among "
        "the normals' scores (mean + z std) kept as at the chosen pair"
    )
    meta = meta.with_(
        normal_model=NormalModel.fit(normals).to_dict(),
        thresholds=override_thresholds(
            best.weights, clean, (best.alpha, best.sigma, gamma, tau), meta.sigma_max
        ),
        alpha=best.alpha,
        sigma=best.sigma,
        term_weights=list(best.weights),
        pixel_threshold=gamma,
        image_threshold=tau,
        calibration=calibration,
    )
    write_artifact(onnx.load(path), meta, path)
    return meta
