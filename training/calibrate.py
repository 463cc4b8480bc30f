"""Calibration of an exported artifact, run on onnxruntime so it applies to any artifact.

1. Term scales: the means of raw d, r, f, t and b on held-out normal images, written into the
   graph's `*_scale` initializers, so every term averages 1 on normal data.
2. alpha, sigma and the term weights: chosen by pixel AUROC + AUPRO + image AUROC on
   labelled defects when given, else on the self-check (the held-out normals with pasted
   synthetic defects, training/selfcheck.py). Never a silent default.
3. gamma and tau: from the calibrated graph's own outputs (`score_map`, `score`) at the
   chosen alpha and sigma: at target false-positive rates on the clean normal images (tau
   by a prediction bound, tail_bound), or at best F1 when labelled defects are given. The
   image decision is the score map's peak away from the edge (models.decision).

The self-check and the override thresholds read the graph's term outputs and mix and blur
them with the graph's own functions (models.scoring), so no second copy of the math exists.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from scipy import stats

from models.artifact import ArtifactMeta
from models.atomic import replacing
from models.decision import EDGE, IMAGE_FPR, PIXEL_FPR
from models.detector import Detector
from models.errors import ArtifactError, DataError, NanoinspectError
from models.gaussian import gaussian_blur
from models.ood import NormalModel
from models.scale import resample, to_scale
from models.scoring import mix, residual, skipped_terms
from training import metrics, selfcheck
from training.selfcheck import TERMS, Choice, Labelled, Terms

SCALES = ("d_scale", "r_scale", "f_scale", "t_scale", "b_scale")  # in the order of TERMS
TERM_OUTPUTS = ("reconstruction", "d_map", "f_map", "t_map", "b_map")
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


def graph_terms(image: np.ndarray, out: dict[str, np.ndarray], r_scale: float) -> Terms:
    """d, r, f, t, b (H, W) of one image, before any weighting, from the graph's outputs
    for it (TERM_OUTPUTS): r from its reconstruction by the graph's own residual."""
    recon = torch.from_numpy(out["reconstruction"][0, 0])
    maps = {k: torch.from_numpy(out[f"{k}_map"][0, 0]) for k in "dftb"}
    return maps | {"r": residual(recon, torch.tensor(image), r_scale)}


def run_each(
    det: Detector, images: list[np.ndarray], alpha: float, sigma: float, outputs: tuple[str, ...]
) -> list[dict[str, np.ndarray]]:
    """The graph's outputs for each image (H, W) alone: their sizes differ."""
    return [det.run(image[None, None], alpha, sigma, outputs) for image in images]


def terms_of(det: Detector, images: list[np.ndarray]) -> list[Terms]:
    """The unweighted terms of each image as det's graph computes them."""
    outs = run_each(det, images, 1.0, 0.0, TERM_OUTPUTS)
    return [graph_terms(im, out, det.meta.r_scale) for im, out in zip(images, outs, strict=True)]


def zoomed(sample: Labelled, scale: float) -> Labelled:
    """A labelled image and its mask at the model's working scale, as the Detector sees it."""
    image, zoom = to_scale(sample.image, scale)
    if zoom == 1.0:
        return sample
    return Labelled(image, resample(sample.mask.astype(np.float32), image.shape) > 0.5, sample.kind)


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


def target_fpr_thresholds(
    pixels: np.ndarray, scores: np.ndarray, pixel_fpr: float, image_fpr: float
) -> tuple[float, float]:
    """gamma leaving pixel_fpr of the normal images' pixels above it (thousands of pixels
    per image: the empirical quantile holds), tau by tail_bound of their image scores."""
    return float(np.quantile(pixels, 1 - pixel_fpr)), tail_bound(scores, image_fpr)


def tail_bound(scores: np.ndarray, fpr: float) -> float:
    """The score that one more normal image exceeds with probability fpr, by the upper
    prediction bound of a normal fit to the n held-out scores: mean + t(n-1, 1-fpr) s
    sqrt(1 + 1/n). With 3-12 held-out images the empirical quantile is their maximum, which
    a new normal exceeds 1/(n+1) of the time on average and far more when the few run low
    (7 of 16 test normals of the default model; quality/thresholds/README.md). One score:
    that score (no spread to fit)."""
    n = len(scores)
    if n < 2:
        return float(np.max(scores))
    k = stats.t.ppf(1 - fpr, n - 1) * np.sqrt(1 + 1 / n)
    return float(np.mean(scores) + k * np.std(scores, ddof=1))


def override_thresholds(
    weights: tuple[float, ...],
    clean: list[Terms],
    pixels: np.ndarray,
    gamma: float,
    sigma_max: float,
) -> list[list[float]]:
    """[alpha, sigma, gamma] per point of OVERRIDE_ALPHAS x OVERRIDE_SIGMAS (up to sigma_max):
    gamma leaves the share of the clean normals' pixels above it that the model's own gamma
    leaves on its own map (pixels), so a map drawn at an override is masked as strictly.
    No tau: an override draws the map; the verdict stays the model's (Detector.score)."""
    points = [(a, s) for s in OVERRIDE_SIGMAS if s <= sigma_max for a in OVERRIDE_ALPHAS]
    share = max(float(np.mean(pixels > gamma)), 1 / pixels.size)
    return [
        [alpha, sigma, float(np.quantile(values, 1 - share))]
        for (alpha, sigma), values in _override_pixels(weights, clean, points).items()
    ]


def _override_pixels(
    weights: tuple[float, ...], clean: list[Terms], points: list[tuple[float, float]]
) -> dict[tuple[float, float], np.ndarray]:
    """Per (alpha, sigma), in the order of points: the normals' map pixels (one array), by
    the graph's blur and mix (models.scoring). Blurring is linear, so each term is blurred
    once per sigma and mixed per alpha."""
    out = {}
    stacks = [torch.stack([c[k] for k in TERMS])[:, None] for c in clean]  # (5, 1, H, W)
    for sigma in dict.fromkeys(s for _, s in points):
        blurred = [gaussian_blur(x, torch.tensor(sigma))[:, None] for x in stacks]
        for alpha in [a for a, s in points if s == sigma]:
            maps = [mix(weights, alpha, *b) for b in blurred]  # (1, 1, H, W) each
            out[(alpha, sigma)] = np.concatenate([m.ravel().numpy() for m in maps])
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
    labelled = [zoomed(s, meta.fibre_scale) for s in labelled]
    meta = _set_scales(path, meta, terms_of(det, normals))

    check = list(labelled) or selfcheck.selfcheck_set(
        normals[:CHECK_NORMALS], seed, meta.fibre_scale
    )
    best, tried = selfcheck.choose(
        terms_of(Detector(path, providers=("cpu",)), [s.image for s in check]),
        [s.mask for s in check],
        sigmas=selfcheck.SIGMAS if sigma is None else (sigma,),
        alphas=selfcheck.ALPHAS if alpha is None else (alpha,),
    )
    meta = meta.with_(alpha=best.alpha, sigma=best.sigma, term_weights=list(best.weights))
    write_artifact(onnx.load(path), meta, path)

    det = Detector(path, providers=("cpu",))  # the graph as it will serve, at its own pair
    clean = run_each(det, normals, best.alpha, best.sigma, ("score_map", "score", *TERM_OUTPUTS))
    own = (
        np.concatenate([out["score_map"].ravel() for out in clean]),
        np.array([out["score"][0] for out in clean]),
    )
    if labelled:
        gamma, tau, method = _best_f1(det, check, best)
    else:
        gamma, tau = target_fpr_thresholds(*own, pixel_fpr, image_fpr)
        method = {
            "method": "target_fpr",
            "pixel_fpr": pixel_fpr,
            "image_fpr": image_fpr,
            "tau": "upper prediction bound of a normal fit to the normals' scores",
        }
    terms = [graph_terms(im, out, meta.r_scale) for im, out in zip(normals, clean, strict=True)]
    meta = meta.with_(
        normal_model=NormalModel.fit(normals).to_dict(),
        thresholds=override_thresholds(best.weights, terms, own[0], gamma, meta.sigma_max),
        pixel_threshold=gamma,
        image_threshold=tau,
        calibration=_record(normals, labelled, check, best, tried, method),
    )
    write_artifact(onnx.load(path), meta, path)
    return meta


def _set_scales(path: Path, meta: ArtifactMeta, clean: list[Terms]) -> ArtifactMeta:
    """Write into the graph at path the term scales that make each term average 1 on the
    clean normals (their terms at meta's scales): meta's scales times the terms' means."""
    means = selfcheck.term_means(clean)
    scales = {name: means[k] * getattr(meta, name) for k, name in zip(TERMS, SCALES, strict=True)}
    meta = meta.with_(**scales)
    write_artifact(onnx.load(path), meta, path)
    return meta


def _best_f1(det: Detector, check: list[Labelled], best: Choice) -> tuple[float, float, dict]:
    """gamma and tau at the best F1 on the labelled images, from the graph's map and score
    of each at the chosen pair."""
    outs = run_each(det, [s.image for s in check], best.alpha, best.sigma, ("score_map", "score"))
    gamma, pixel_f1 = metrics.best_f1_threshold(
        np.concatenate([s.mask.ravel() for s in check]),
        np.concatenate([out["score_map"].ravel() for out in outs]),
    )
    tau, image_f1 = metrics.best_f1_threshold(
        np.array([s.kind != "good" for s in check]), np.array([out["score"][0] for out in outs])
    )
    return gamma, tau, {"method": "best_f1", "pixel_f1": pixel_f1, "image_f1": image_f1}


def _record(
    normals: list[np.ndarray],
    labelled: list[Labelled],
    check: list[Labelled],
    best: Choice,
    tried: list[Choice],
    method: dict,
) -> dict:
    """How the calibration was made, for the metadata: the images, the self-check's figures
    and whether they mean anything, the candidates, the families, the thresholds' method."""
    meaningful = bool(labelled) or len(normals) >= MIN_CHECK_NORMALS
    return {
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
        **method,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "override_thresholds": (
            "per (alpha, sigma): gamma leaving the share of normal pixels above it that the "
            "chosen pair's does; the verdict stays the chosen pair's"
        ),
    }
