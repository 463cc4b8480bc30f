"""Checkpoint -> one self-contained ONNX file: the scoring graph of models.scoring with
dynamic N, H, W, metadata that says everything needed to use it, a parity check against
torch on real images at two sizes (training/parity.py), calibration, and onnx's full
checker. Also a re-export of an artifact with this code's graph, and an fp16 copy."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from models.artifact import INPUTS, OUTPUTS, ArtifactMeta
from models.atomic import replacing
from models.config import ModelConfig
from models.errors import NanoinspectError
from models.gaussian import SIGMA_MAX
from models.networks import BiGAN
from models.phase import for_export, restore
from models.scoring import FLIPS, AnomalyScorer, reach, skipped_terms
from training.calibrate import SCALES, calibrate, check_settings, write_artifact
from training.data import find_dataset, load_images, load_mask
from training.parity import check_fp16, check_parity
from training.provenance import code_version
from training.refit import scorer_from_run
from training.selfcheck import Labelled

PARITY_RTOL, PARITY_ATOL = 1e-3, 1e-4  # onnxruntime vs torch, on every output
FP16_RTOL, FP16_ATOL = 1e-2, 1e-2  # fp16 graph vs fp32 graph, both on onnxruntime
# kept in fp32 in an fp16 graph: the Gaussian's kernel, the means, the RMS
FP32_OPS = ["Range", "Exp", "ReduceSum", "ReduceMean", "Pow", "Sqrt", "Resize"]
FP32_WEIGHTS = ("features.weight", "stats.weight")  # and the convolutions that use them
DEFAULT_SIGMA, DEFAULT_MIN_AREA = 2.0, 16  # sigma: until calibration chooses one
TERM_STATE = {"f": "features", "t": "stats", "b": "b_scale"}  # what a left-out term drops


def with_meta(
    scorer: AnomalyScorer, meta: ArtifactMeta, path: Path, *, parity: bool = True
) -> float:
    """Write scorer's graph as meta's calibration sets it up (its scales and weights, the
    terms without weight left out) to path, with meta; returns its parity error (0 when
    not checked: the ablation's variants, from the code the shipped graph was checked on)."""
    scorer.skipped, scorer.views = skipped_terms(meta.term_weights), meta.views
    for name in SCALES:
        getattr(scorer, name).fill_(getattr(meta, name))
    scorer.weights.copy_(torch.tensor(meta.term_weights))
    write_graph(scorer, path, meta.sigma)
    write_artifact(onnx.load(path), meta, path)
    if not parity:
        return 0.0
    return _parity(scorer, path, _noise())


def calibration_set(
    data: Path, crop_bottom: float, holdout: list[str] | None, sample_bits: int = 16
) -> tuple[list[np.ndarray], list[Labelled]]:
    """Normal images (only the run's held-out ones when data is its training set) and the
    labelled test images, if the layout has them, read as the model's training images were."""
    layout = find_dataset(data)
    normals = layout.train
    if holdout is not None:
        keep = set(holdout)
        normals = [s for s in normals if str(s.path.relative_to(layout.root)) in keep]
    labelled = [
        Labelled(img, load_mask(s.mask_path, img.shape, crop_bottom), s.kind)
        for s, img in zip(
            layout.test, load_images(layout.test, crop_bottom, sample_bits), strict=True
        )
    ]
    return load_images(normals, crop_bottom, sample_bits), labelled


def _noise() -> list[np.ndarray]:
    """Two images to check parity on when no real ones are at hand."""
    return [np.random.default_rng(i).random((256, 256), dtype=np.float32) for i in range(2)]


def _parity(scorer: AnomalyScorer, path: Path, images: list[np.ndarray]) -> float:
    """training.parity.check_parity within the tolerances export promises."""
    return check_parity(scorer, path, images, rtol=PARITY_RTOL, atol=PARITY_ATOL)


@contextmanager
def _quiet_exporter():
    """torch's exporter reports on itself (optional torchvision ops it skips, deprecations in
    its internals): nothing a user of `export` can act on, so it stays off the terminal."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        log.setLevel(level)


def write_graph(scorer: AnomalyScorer, path: Path, sigma: float = DEFAULT_SIGMA) -> None:
    """The scoring graph (generator output stage in phase space) as one ONNX file at path,
    with dynamic N, H, W and no metadata yet."""
    example = (torch.rand(2, 1, 64, 96), torch.tensor(0.5), torch.tensor(sigma))
    dims = {2: torch.export.Dim("H", min=8, max=65536), 3: torch.export.Dim("W", min=8, max=65536)}
    with _quiet_exporter():
        program = torch.onnx.export(
            # optimize=False: the optimizer would fold away the division by the 1.0 placeholder
            # scales, leaving calibration nothing to set; onnxruntime optimises at load anyway
            for_export(scorer),
            example,
            dynamo=True,
            verbose=False,  # its progress lines would fill stdout, which is for the result
            external_data=False,
            optimize=False,
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_shapes=({0: torch.export.Dim("N", min=1, max=4096), **dims}, None, None),
        )
    program.save(str(path))


def scorer_from_artifact(path: Path) -> tuple[AnomalyScorer, ArtifactMeta]:
    """The torch scorer holding an exported artifact's weights and calibration (torch eager
    twin of the ONNX graph: for re-export and for benchmarks)."""
    model = onnx.load(path)
    meta = ArtifactMeta.from_props({p.key: p.value for p in model.metadata_props}, str(path))
    cfg = ModelConfig.from_dict(meta.model_config)
    scorer = AnomalyScorer(BiGAN(cfg), fibre_scale=meta.fibre_scale).eval()
    scorer.skipped, scorer.views = skipped_terms(meta.term_weights), meta.views
    weights = {
        i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer
    }
    for name in [k for k in weights if k.endswith(".up_weight")]:  # a phase-space graph
        weights = restore(weights, name.removesuffix("up_weight"))
    missing, unexpected = scorer.load_state_dict(weights, strict=False)
    left_out = {TERM_STATE[k] for k in scorer.skipped} | {f"{k}_scale" for k in scorer.skipped}
    if unexpected or not {k.split(".")[0] for k in missing} <= left_out:
        raise NanoinspectError(f"{path}: its weights do not fit this code's graph")
    return scorer, meta


def prune(scorer: AnomalyScorer, meta: ArtifactMeta, path: Path) -> float:
    """Rewrite the calibrated graph at path without the hand-made terms its weights leave
    out (their outputs become zeros; the score map is unchanged, their weight being 0);
    returns the parity error of the new graph."""
    if not skipped_terms(meta.term_weights):
        return 0.0
    return with_meta(scorer, meta, path)


def reexport(src: Path, out: Path) -> float:
    """Write `src`'s model again with this code's graph, keeping its weights, calibration and
    metadata (a newer, faster graph without retraining); returns the parity error seen."""
    scorer, meta = scorer_from_artifact(src)
    with replacing(out) as (tmp,):
        write_graph(scorer, tmp, meta.sigma)
        write_artifact(onnx.load(tmp), meta, tmp)
        parity = _parity(scorer, tmp, _noise())
        onnx.checker.check_model(onnx.load(tmp), full_check=True)
    return parity


def check_output(out: Path, force: bool) -> None:
    """Refuse, before any work, an output that is a folder or an existing file (unless
    force): like `train`, export never overwrites what it was not asked to."""
    if out.is_dir():
        raise NanoinspectError(f"--out {out} is a folder: name the .onnx file to write")
    if out.exists() and not force:
        raise NanoinspectError(f"{out} exists: pass --force to overwrite it, or another --out")


def export(
    run: Path,
    out: Path,
    *,
    data: Path | None = None,
    name: str | None = None,
    alpha: float | None = None,
    min_area: int = DEFAULT_MIN_AREA,
    views: int = 1,
    force: bool = False,
) -> tuple[ArtifactMeta, float]:
    """Export, check parity and calibrate; returns the metadata and the parity error seen."""
    check_output(out, force)
    check_settings(alpha=alpha, sigma=None, min_area=min_area, sigma_max=SIGMA_MAX)
    if views not in (1, 2, len(FLIPS)):
        raise NanoinspectError(f"--views must be 1, 2 or {len(FLIPS)}, not {views}")
    scorer, ckpt = scorer_from_run(run)
    scorer.views = views
    cfg, info = scorer.bigan.cfg, ckpt["meta"]
    crop = info["train"]["crop_bottom"]
    bits = info.get("sample_bits", 16)
    if data is None:
        if not Path(info["data"]).is_dir():
            raise NanoinspectError(f"training data {info['data']} is gone: pass --calibrate DATA")
        normals, labelled = calibration_set(Path(info["data"]), crop, info["holdout"], bits)
        labelled = []  # the training set's test images may be the evaluation set
    else:
        same = data.resolve() == Path(info["data"])
        normals, labelled = calibration_set(data, crop, info["holdout"] if same else None, bits)
    if not normals:
        raise NanoinspectError("no held-out normal images to calibrate on")

    meta = ArtifactMeta(  # alpha, sigma, weights and thresholds are set by calibrate below
        name=name or out.stem,
        alpha=0.5 if alpha is None else alpha,
        sigma=DEFAULT_SIGMA,
        sigma_max=SIGMA_MAX,
        pixel_threshold=float("inf"),
        image_threshold=float("inf"),
        min_area=min_area,
        stride=cfg.stride,
        halo=reach(scorer.side, cfg.stride),
        r_scale=1.0,
        d_scale=1.0,
        f_scale=1.0,
        t_scale=1.0,
        b_scale=1.0,
        term_weights=[1.0, 0.0, 0.0, 0.0],
        model_config=cfg.to_dict(),
        train_config={**info["train"], "seed": info["seed"], "steps": ckpt["step"]},
        fibre_scale=info.get("fibre_scale", 0.0),
        views=views,
        sample_bits=bits,
        data_digest=info["data_digest"],
        code_version=code_version(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    with replacing(out) as (tmp,):
        write_graph(scorer, tmp)
        write_artifact(onnx.load(tmp), meta, tmp)
        parity = _parity(scorer, tmp, [*normals, *(s.image for s in labelled)])
        meta = calibrate(tmp, normals, labelled, alpha=alpha)
        parity = max(parity, prune(scorer, meta, tmp))
        onnx.checker.check_model(onnx.load(tmp), full_check=True)
    return meta, parity


def to_fp16(src: Path, out: Path) -> float:
    """An fp16 copy of an fp32 artifact for CUDA/TensorRT (inputs and outputs stay float32,
    the scoring reductions stay fp32); the CPU keeps serving the fp32 file. Checked against
    the fp32 graph on onnxruntime's CPU within FP16_RTOL/FP16_ATOL; returns the worst gap."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(src)
    # the Mahalanobis terms square and sum large whitened values: fp16 would round them away
    whitening = [n.name for n in model.graph.node if set(n.input) & set(FP32_WEIGHTS)]
    half = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=FP32_OPS, node_block_list=whitening
    )
    with replacing(out) as (tmp,):
        onnx.save(half, tmp)
        worst = check_fp16(src, tmp, rtol=FP16_RTOL, atol=FP16_ATOL)
    return worst


if __name__ == "__main__":  # python -m training.export SRC.onnx OUT.onnx [--fp16]
    import sys

    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    gap = to_fp16(src, dst) if "--fp16" in sys.argv else reexport(src, dst)
    print(f"wrote {dst}: parity max gap = {gap:.2e}")
