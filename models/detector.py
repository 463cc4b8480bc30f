"""The runtime: an exported artifact on onnxruntime, from images to scores, masks and regions.

Torch-free. Same-size images go through in batches; images larger than `tile` on a side are
scored in overlapping tiles whose cores are stitched, so memory stays bounded.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from models import ood
from models.artifact import INPUTS, OUTPUTS, ArtifactMeta
from models.decision import edge_band, image_decision
from models.errors import ArtifactError, ImageError, NanoinspectError
from models.images import MIN_IMAGE_SIDE
from models.providers import unusable
from models.regions import Region, interior, segment
from models.scale import LIMITS, TOLERANCE, fibre_scale, resample, to_scale

log = logging.getLogger(__name__)

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = {PROVIDERS["tensorrt"], PROVIDERS["cuda"]}
MIN_SIDE = 24  # sides under it are mirrored out: the graph reflects MARGIN px + stride padding
TILE = 1536  # px: images larger than this on a side are scored in tiles
R = TypeVar("R")


@dataclass(frozen=True)
class Result:
    # the image score: image_decision of the model's working-scale map (at alpha and sigma
    # only when they are its own or an image threshold was given), against tau
    score: float
    is_anomalous: bool  # score > image_threshold, or out of distribution
    score_map: np.ndarray  # float32 (H, W)
    mask: np.ndarray  # bool (H, W): Omega
    regions: list[Region]
    alpha: float  # the settings score_map, mask and regions were drawn at
    sigma: float
    image_threshold: float
    pixel_threshold: float
    min_area: int
    tiles: int  # 1 when scored in one pass
    zoom: float = 1.0  # the image was scored zoomed by this to the training fibre scale
    out_of_distribution: str | None = None  # why the image is unlike the training images
    reason: str = ""  # why the answer is what it is, in one line
    notes: tuple[str, ...] = ()  # what scoring did that a user should know

    @property
    def anomalous_area_fraction(self) -> float:
        return float(self.mask.mean())


def score_isolated(
    score: Callable[[list[np.ndarray]], list[R]], images: list[np.ndarray]
) -> list[R | Exception]:
    """score(images) in one call; if that fails, each image alone, so one bad image costs
    only its own result (its exception), in the HTTP batcher and the batch job alike."""
    try:
        return list(score(images))
    except Exception as e:
        if len(images) == 1:
            return [e]
    out: list[R | Exception] = []
    for image in images:
        try:
            out += score([image])
        except Exception as e:
            out.append(e)
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tile_spans(
    length: int, tile: int, halo: int, used: int | None = None, align: int = 1
) -> list[tuple[int, int, int, int]]:
    """Cover [0, length) with tiles of `tile` (the last up to align - 1 wider) overlapping
    by >= 2*halo - align.

    Returns (start, stop, core_start, core_stop): each pixel belongs to exactly one core,
    which lies at least `halo` - align away from its tile's inner edges. Starts are
    multiples of `align` (the model's stride), so every tile sees the latent grid where the
    whole image would: the grid-based terms then agree across tiles. With `used`, a single
    tile keeps only [0, used) as its core (the rest is mirrored padding)."""
    if length <= tile:
        return [(0, length, 0, length if used is None else used)]
    n = math.ceil((length - 2 * halo) / (tile - 2 * halo))
    starts = [round(i * (length - tile) / (n - 1)) for i in range(n)]
    starts = [s - s % align for s in starts]
    stops = [min(s + tile, length) for s in starts[:-1]] + [length]  # last: up to align-1 wider
    bounds = [0] + [(starts[i + 1] + stops[i]) // 2 for i in range(n - 1)] + [length]
    return [(s, stops[i], bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def provider_options(provider: str, fixed_size: bool, trt_cache: str | Path | None) -> dict:
    """onnxruntime options per provider: cuDNN's convolution search (exhaustive only for
    fixed sizes), TensorRT's engine cache and fp16 kernels; nothing for the CPU."""
    if provider == PROVIDERS["cuda"]:
        return {
            "cudnn_conv_algo_search": "EXHAUSTIVE" if fixed_size else "HEURISTIC",
            "do_copy_in_default_stream": "1",
        }
    if provider == PROVIDERS["tensorrt"]:
        cache = {} if trt_cache is None else {
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(trt_cache),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(trt_cache),
        }  # fmt: skip
        return {"trt_fp16_enable": "True", **cache}
    return {}


class Detector:
    """An ONNX artifact loaded for inference.

    providers: names from PROVIDERS in order of preference; the default tries CUDA, then
    CPU (TensorRT only when asked). require_gpu makes a CPU fallback an error.
    fixed_size: every image has the same size, so cuDNN may search exhaustively, once per
    shape, for its fastest convolutions (with varying sizes that search would rerun for
    each new shape: the heuristic choice is used instead), and onnxruntime may plan its
    memory per shape (a memory pattern: with varying sizes it keeps one per shape seen).
    batch_pixels: at most this many pixels per inference call (and at most batch_size
    images; one image always runs): the arena's peak grows with a call's pixels, not its
    image count; a model of V views (models.scoring.FLIPS) counts each pixel V times, the
    networks seeing each image V times. None: batch_size alone.
    trt_cache: a folder (a volume) where TensorRT keeps its built engines across restarts.
    tile: images larger than this on a side (after the zoom to the working scale) are
    scored in tiles overlapping by the model's halo (what a pixel's score looks at), so
    the stitched map is the one-pass map; it must be at least 4 halos.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        providers: Sequence[str] = ("cuda", "cpu"),
        require_gpu: bool = False,
        threads: int | None = None,
        batch_size: int = 8,
        batch_pixels: int | None = None,
        tile: int = TILE,
        fixed_size: bool = False,
        trt_cache: str | Path | None = None,
    ):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path}: model file not found")
        unknown = [p for p in providers if p not in PROVIDERS]
        if unknown:
            raise ArtifactError(f"unknown providers {unknown}; choose from {list(PROVIDERS)}")
        available = {p for p in ort.get_available_providers() if unusable(p) is None}
        wanted = [PROVIDERS[p] for p in providers if PROVIDERS[p] in available]
        if not wanted:
            raise ArtifactError(f"none of the providers {list(providers)} is available here")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.log_severity_level = 3
        options.enable_mem_pattern = fixed_size
        with_options = [(p, provider_options(p, fixed_size, trt_cache)) for p in wanted]
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=with_options)
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ArtifactError(f"{self.path}: not a loadable ONNX model ({e})") from None
        self.meta = ArtifactMeta.from_props(
            self.session.get_modelmeta().custom_metadata_map, str(self.path)
        )
        names_in = tuple(i.name for i in self.session.get_inputs())
        names_out = tuple(o.name for o in self.session.get_outputs())
        if names_in != INPUTS or names_out != OUTPUTS:
            raise ArtifactError(
                f"{self.path}: graph has inputs {names_in} and outputs {names_out}, "
                f"expected {INPUTS} and {OUTPUTS}"
            )
        self.provider = self.session.get_providers()[0]
        if self.provider not in GPU_PROVIDERS:
            if require_gpu:
                raise ArtifactError(
                    f"a GPU is required but onnxruntime runs {self.provider} "
                    f"(available: {sorted(available)})"
                )
            if any(PROVIDERS[p] in GPU_PROVIDERS for p in providers):
                log.warning("no usable GPU: scoring runs on %s", self.provider)
        self.normals = ood.NormalModel.from_dict(self.meta.normal_model)
        self.sha256 = file_sha256(self.path)
        self.batch_size, self.batch_pixels = batch_size, batch_pixels
        self.tile, self.halo = tile - tile % self.meta.stride, self.meta.halo
        if tile < 4 * self.halo:
            raise ArtifactError(
                f"tile {tile} px is too small for {self.path.name}: a pixel's score looks "
                f"{self.halo} px around it, so tiles must be at least {4 * self.halo} px"
            )

    @property
    def name(self) -> str:
        return self.meta.name

    def run(
        self,
        batch: np.ndarray,
        alpha: float,
        sigma: float,
        outputs: Sequence[str] = OUTPUTS,
    ) -> dict[str, np.ndarray]:
        """The raw graph: batch (N, 1, H, W) float32 in [0, 1] -> `outputs` by name. On a GPU
        the outputs not asked for stay in device memory (I/O binding): no copy back."""
        feeds = {
            "image": np.ascontiguousarray(batch, dtype=np.float32),
            "alpha": np.asarray(alpha, dtype=np.float32),
            "sigma": np.asarray(sigma, dtype=np.float32),
        }
        if self.provider not in GPU_PROVIDERS:
            return dict(zip(outputs, self.session.run(list(outputs), feeds), strict=True))
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in OUTPUTS:
            binding.bind_output(name, "cpu" if name in outputs else "cuda")
        self.session.run_with_iobinding(binding)
        values = dict(zip(OUTPUTS, binding.get_outputs(), strict=True))
        return {name: values[name].numpy() for name in outputs}

    def per_call(self, shape: tuple[int, int]) -> int:
        """How many images of `shape` (H, W) go into one inference call."""
        if self.batch_pixels is None:
            return self.batch_size
        pixels = shape[0] * shape[1] * self.meta.views
        return max(1, min(self.batch_size, self.batch_pixels // pixels))

    def trim(self) -> None:
        """Give the memory arena's free chunks back to the system (a minimal run that shrinks
        the arena at its end): an idle server returns to its post-warm-up size."""
        import onnxruntime as ort

        shrink = ort.RunOptions()
        arenas = "cpu:0" if self.provider not in GPU_PROVIDERS else "cpu:0;gpu:0"
        shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", arenas)
        feeds = {
            "image": np.zeros((1, 1, MIN_SIDE, MIN_SIDE), np.float32),
            "alpha": np.asarray(self.meta.alpha, dtype=np.float32),
            "sigma": np.asarray(self.meta.sigma, dtype=np.float32),
        }
        self.session.run(["score"], feeds, shrink)

    def warm_up(self, size: tuple[int, int] = (256, 256)) -> None:
        self.run(np.zeros((1, 1, size[1], size[0]), np.float32), self.meta.alpha, self.meta.sigma)

    def score(
        self,
        images: Sequence[np.ndarray],
        *,
        alpha: float | None = None,
        sigma: float | None = None,
        pixel_threshold: float | None = None,
        image_threshold: float | None = None,
        min_area: int | None = None,
    ) -> list[Result]:
        """Score grey images (H, W) float32 in [0, 1]; settings default to the artifact's."""
        m = self.meta
        alpha = m.alpha if alpha is None else float(alpha)
        sigma = m.sigma if sigma is None else float(sigma)
        if not 0.0 <= alpha <= 1.0:
            raise NanoinspectError(f"alpha must lie in [0, 1], not {alpha}")
        if not 0.0 <= sigma <= m.sigma_max:
            raise NanoinspectError(f"sigma must lie in [0, {m.sigma_max}], not {sigma}")
        area = m.min_area if min_area is None else int(min_area)
        for img in images:
            if img.ndim != 2 or min(img.shape) < MIN_IMAGE_SIDE:
                raise ImageError(
                    f"images must be 2-D and at least {MIN_IMAGE_SIDE} px a side, got {img.shape}"
                )

        gamma, tau, calibration_notes = self.thresholds(
            alpha, sigma, pixel_threshold, image_threshold
        )
        scales = [fibre_scale(img) for img in images]
        zoomed = [
            to_scale(img, m.fibre_scale, measured=s) for img, s in zip(images, scales, strict=True)
        ]
        maps = self._maps([img for img, _ in zoomed], alpha, sigma)
        view = self.is_view(alpha, sigma, image_threshold)
        deciding = self._maps([img for img, _ in zoomed], m.alpha, m.sigma) if view else maps

        results = []
        for (smap, tiles), (decider, _), original, (work, zoom), measured in zip(
            maps, deciding, images, zoomed, scales, strict=True
        ):
            score = image_decision(decider)  # on the map the graph made, at the working scale
            band = edge_band(smap.shape)
            ood = self._ood(work, measured)
            if zoom != 1.0:
                smap = resample(smap, original.shape)
            scale_y, scale_x = smap.shape[0] / work.shape[0], smap.shape[1] / work.shape[1]
            inside = interior(smap.shape, (round(band * scale_y), round(band * scale_x)))
            mask, regions = segment(smap, gamma, area, inside, decides=not view)
            results.append(
                Result(
                    score=score,
                    is_anomalous=score > tau or ood is not None,
                    score_map=smap,
                    mask=mask,
                    regions=regions,
                    alpha=alpha,
                    sigma=sigma,
                    image_threshold=tau,
                    pixel_threshold=gamma,
                    min_area=area,
                    tiles=tiles,
                    zoom=zoom,
                    out_of_distribution=ood,
                    reason=_reason(score, tau, ood, regions, (m.alpha, m.sigma) if view else None),
                    notes=(*_image_notes(original.shape, zoom), *calibration_notes),
                )
            )
        return results

    def _maps(
        self, images: list[np.ndarray], alpha: float, sigma: float
    ) -> list[tuple[np.ndarray, int]]:
        """The graph's score map of each image (at the working scale) and the tiles it took:
        same-size images in batches, large or tiny ones by parts (_stitched)."""
        maps: dict[int, tuple[np.ndarray, int]] = {}
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            if max(img.shape) > self.tile or min(img.shape) < MIN_SIDE:
                maps[i] = self._stitched(img, alpha, sigma)
            else:
                groups.setdefault(img.shape, []).append(i)
        for shape, idx in groups.items():
            n = self.per_call(shape)
            for k in range(0, len(idx), n):
                chunk = idx[k : k + n]
                batch = np.stack([images[i] for i in chunk])[:, None]
                out = self.run(batch, alpha, sigma, ("score_map",))
                for j, i in enumerate(chunk):
                    maps[i] = (out["score_map"][j, 0], 1)
        return [maps[i] for i in range(len(images))]  # a KeyError, not a gap, if one is missing

    def is_view(self, alpha: float, sigma: float, image_threshold: float | None) -> bool:
        """Whether these settings only draw the map: an override of alpha or sigma without an
        image threshold draws the map and regions at it, while the score and verdict stay
        the model's own map's against the model's tau (no decision moves with a view)."""
        own = (alpha, sigma) == (self.meta.alpha, self.meta.sigma)
        return not own and image_threshold is None

    def thresholds(
        self, alpha: float, sigma: float, gamma: float | None, tau: float | None
    ) -> tuple[float, float, tuple[str, ...]]:
        """(gamma, tau) for a map at these settings, and a note when gamma was not calibrated
        for them: gamma the table's for (alpha, sigma) (ArtifactMeta.pixel_threshold_for),
        else the model's, said to be off; tau the model's (the verdict is taken on the
        model's own map unless an image threshold is given), and a note when an override
        only draws the map."""
        m = self.meta
        calibrated = m.pixel_threshold_for(alpha, sigma)
        notes = []
        if gamma is None and calibrated is None:
            grid = f"alpha {m.alpha:g} with sigma {m.sigma:g}"
            if m.thresholds:
                alphas = ", ".join(f"{a:g}" for a in sorted({row[0] for row in m.thresholds}))
                sigmas = ", ".join(f"{s:g}" for s in sorted({row[1] for row in m.thresholds}))
                grid += f", and alpha {alphas} with sigma {sigmas}"
            notes.append(
                f"pixel threshold not calibrated for alpha {alpha:g}, sigma {sigma:g}: the "
                f"model's are for {grid}; pass pixel_threshold to set it"
            )
        if self.is_view(alpha, sigma, tau):
            notes.append(
                f"alpha {alpha:g}, sigma {sigma:g} draw the map and regions; the score and "
                f"verdict are the model's, at alpha {m.alpha:g}, sigma {m.sigma:g} (pass "
                "image_threshold to decide on this map)"
            )
        pair = (
            (m.pixel_threshold if calibrated is None else calibrated) if gamma is None else gamma,
            m.image_threshold if tau is None else tau,
        )
        return float(pair[0]), float(pair[1]), tuple(notes)

    def _ood(self, work: np.ndarray, measured: float) -> str | None:
        """Why the image (`work` at the working scale; `measured`, its fibre scale as it
        came) is out of the training distribution, or None (models.ood)."""
        summary = ood.summarise(work)
        reason = ood.blank_reason(summary, measured)
        if reason is None and self.meta.fibre_scale > 0:
            factor = self.meta.fibre_scale / measured
            lo, hi = LIMITS
            if not lo / TOLERANCE <= factor <= hi * TOLERANCE:
                reason = (
                    f"magnification outside the trained range: fibres measure {measured:.1f} px "
                    f"against the training images' {self.meta.fibre_scale:.1f} px, beyond the "
                    f"{lo:g}-{hi:g}x zoom the model scores at"
                )
        if reason is None and self.normals is not None:
            reason = self.normals.reason(summary)
        return reason

    def _stitched(self, image: np.ndarray, alpha: float, sigma: float) -> tuple[np.ndarray, int]:
        """Score an image by parts: large ones tile by tile, small ones mirrored out to
        MIN_SIDE; each part's core goes into the map."""
        smap = np.empty(image.shape, np.float32)
        h, w = image.shape
        padded = np.pad(image, ((0, max(MIN_SIDE - h, 0)), (0, max(MIN_SIDE - w, 0))), "symmetric")
        spans = [
            (ys, xs)
            for ys in tile_spans(padded.shape[0], self.tile, self.halo, h, self.meta.stride)
            for xs in tile_spans(padded.shape[1], self.tile, self.halo, w, self.meta.stride)
        ]
        for (y0, y1, cy0, cy1), (x0, x1, cx0, cx1) in spans:
            tile = padded[y0:y1, x0:x1]
            out = self.run(tile[None, None], alpha, sigma, ("score_map",))
            core = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
            smap[cy0:cy1, cx0:cx1] = out["score_map"][0, 0][core]
        return smap, len(spans)


def _image_notes(shape: tuple[int, int], zoom: float) -> tuple[str, ...]:
    """What was done to the image before scoring that changes how far to trust it."""
    h, w = shape
    out = []
    if min(h, w) < MIN_SIDE:
        out.append(
            f"{w}x{h} is under the {MIN_SIDE} px a side the model needs for context: "
            "scored mirrored out to it, so the result is less reliable"
        )
    if zoom != 1.0:
        out.append(f"scored zoomed {zoom:.3g}x to the training images' fibre scale")
    return tuple(out)


def _regions(n: int) -> str:
    return "1 region" if n == 1 else f"{n} regions"


def _reason(
    score: float,
    tau: float,
    ood: str | None,
    regions: list[Region],
    decided_at: tuple[float, float] | None = None,
) -> str:
    """One line on why the image is anomalous or normal; decided_at: the model's (alpha,
    sigma) when the map and regions were drawn at an override and do not decide."""
    if ood is not None:
        return f"out of distribution: {ood}"
    at = "" if decided_at is None else " at the model's alpha {:g}, sigma {:g}".format(*decided_at)
    if score > tau:
        return f"score {score:.4g} above the image threshold {tau:.4g}{at}"
    why = f"normal: score {score:.4g} not above the image threshold {tau:.4g}{at}"
    if decided_at is not None:
        drawn = f"; {_regions(len(regions))} on the map drawn at the override, which does "
        return why + (drawn + "not decide" if regions else "")
    edge = [g for g in regions if not g.counts]
    if regions and len(edge) == len(regions):
        return f"{why}; {_regions(len(regions))} only in the edge band, which does not count"
    if regions:
        return (
            f"{why}; {_regions(len(regions))} above the pixel threshold ({len(edge)} only in "
            "the edge band), no pixel above the image threshold outside the band"
        )
    return why
