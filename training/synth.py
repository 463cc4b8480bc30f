"""Synthetic SEM micrographs of electrospun nanofibre mats, with defects and exact masks.

The demo and test data of nanoinspect: the model learns from defect-free mats and must find
beads, films, clumps and particles it never saw. Deterministic by seed; numpy, scipy, Pillow.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps
from scipy import ndimage as ndi

from models.errors import DataError

DEFECTS: tuple[str, ...] = ("bead", "film", "clump", "particle")
SYNTH_VERSION = 1
_GENERATOR = "nanoinspect.training.synth"
_LAYERS = 5  # depth layers, deepest first: dimmer and blurrier the deeper
_PAD = 12  # render margin so fibres, blurs and shadows continue past the border
_LIGHT = (0.8, -0.6)  # in-plane direction of the SE detector: one flank of each fibre is brighter
_F32 = np.float32
_Defect = tuple[np.ndarray, np.ndarray, np.ndarray, int]  # premult, alpha, mask, depth


def _profile(u: np.ndarray, side: np.ndarray) -> np.ndarray:
    """SEM edge brightening: secondary-electron yield grows as the surface tilts away from the
    beam, so a fibre or dome is brightest at its rims; `side` is the detector's one-sided light."""
    return (0.45 + 0.55 * u * u + 0.12 * side).astype(_F32)


def _tubes(pts: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Render tubes around densely sampled centrelines, pts = (x, y, tx, ty, r, gain) x N: one
    EDT to the rasterised centrelines finds the nearest sample, whose tangent line gives the
    sub-pixel distance; only a band around the lines is shaded. Returns premult value, alpha."""
    h, w = shape
    val, alpha = np.zeros((2, h * w), _F32)
    ix, iy = np.rint(pts[0]).astype(np.intp), np.rint(pts[1]).astype(np.intp)
    ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    if not ok.any():
        return val.reshape(shape), alpha.reshape(shape)
    flat = iy[ok] * w + ix[ok]
    attrs = np.zeros((6, h * w), _F32)
    attrs[:, flat] = pts[:, ok]
    line = np.ones(h * w, bool)
    line[flat] = False
    dist, (ny, nx) = ndi.distance_transform_edt(line.reshape(shape), return_indices=True)
    band = np.flatnonzero(dist <= pts[4].max() + 1.5)
    px, py, tx, ty, r, g = attrs[:, (ny * w + nx).ravel()[band]]
    yy, xx = np.divmod(band, w)
    sd = (xx - px) * ty - (yy - py) * tx  # signed distance to the local tangent line
    d = np.maximum(np.abs(sd), dist.ravel()[band] - 0.71)
    a = np.clip(r - d + 0.5, 0.0, 1.0)
    side = np.clip(sd / r, -1, 1) * (ty * _LIGHT[0] - tx * _LIGHT[1])
    val[band], alpha[band] = g * _profile(np.clip(d / r, 0, 1), side) * a, a
    return val.reshape(shape), alpha.reshape(shape)


def _window(shape: tuple[int, int], cx: float, cy: float, ext: float) -> tuple:
    """The slice of the canvas within ext px of (cx, cy) and its float pixel grids."""
    y0, x0 = max(0, int(cy - ext)), max(0, int(cx - ext))
    y1, x1 = min(shape[0], int(cy + ext) + 2), min(shape[1], int(cx + ext) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(_F32)
    return (slice(y0, y1), slice(x0, x1)), yy, xx


def _dome(
    rng: np.random.Generator, cx: float, cy: float, r0: float, rough: float, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """A roughly round body (particle, clump core, film outline) with a radial harmonic outline,
    shaded as a dome with bright rims. Returns premultiplied value and alpha."""
    val, alpha = np.zeros(shape, _F32), np.zeros(shape, _F32)
    win, yy, xx = _window(shape, cx, cy, r0 * (1 + rough) + 2)
    dx, dy = xx - cx, yy - cy
    phi, rho = np.arctan2(dy, dx), np.hypot(dx, dy)
    rad = np.full(dx.shape, r0, _F32)
    for k in (2, 3, 4, 5):
        rad += r0 * rough * rng.uniform(0, 1) / k * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    rad = np.maximum(rad, 0.3 * r0)
    a = np.clip(rad - rho + 0.5, 0, 1)
    side = np.clip((dx * _LIGHT[0] + dy * _LIGHT[1]) / rad, -1, 1)
    val[win], alpha[win] = _profile(np.clip(rho / rad, 0, 1), side) * a, a
    return val, alpha


def _paths(
    rng: np.random.Generator, seeds: np.ndarray, half: float, wiggle: float, step: float = 0.7
) -> np.ndarray:
    """Smooth random paths of length 2 * half through seeds = (x0, y0, theta, radius, gain) x n:
    heading = theta + a few slow sinusoids of arc length, so fibres bend gently.
    Returns (x, y, tx, ty, radius, gain) x (n * samples)."""
    x0, y0, theta, radius, gain = seeds[:, :, None]
    n, s = seeds.shape[1], np.arange(-half, half, step, dtype=_F32)
    lam = rng.uniform(0.6, 3.5, (3, n, 1)) * min(half, 250.0)
    amp, ph = rng.uniform(0, wiggle, (3, n, 1)), rng.uniform(0, 2 * np.pi, (3, n, 1))
    head = theta + (amp * np.sin(2 * np.pi * s / lam + ph)).sum(0)
    tx, ty = np.cos(head).astype(_F32), np.sin(head).astype(_F32)
    x, y, c = np.cumsum(tx * step, 1), np.cumsum(ty * step, 1), len(s) // 2
    x, y = x + x0 - x[:, c : c + 1], y + y0 - y[:, c : c + 1]
    return np.stack(np.broadcast_arrays(x, y, tx, ty, radius, gain)).reshape(6, -1).astype(_F32)


def _scene(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[list, np.ndarray, float]:
    """Background and fibre layers (deepest first) as (premult, alpha, centreline points).
    Fibres follow an isotropic line process: direction weighted by the projected width, offset
    uniform, so their density is even and their count scales with the image's perimeter."""
    h, w = shape
    rf = rng.uniform(2.2, 3.0)
    n = max(2, round(rng.uniform(0.55, 0.8) * (h + w) / (np.pi * rf * _LAYERS)))
    layers = []
    for k in range(_LAYERS):
        th = rng.uniform(0, np.pi, 4 * n + 8)
        width = w * np.abs(np.sin(th)) + h * np.abs(np.cos(th))
        keep = np.flatnonzero(rng.uniform(0, np.hypot(h, w), th.size) < width)[:n]
        th, off = th[keep], rng.uniform(-0.5, 0.5, keep.size) * width[keep]
        depth = k / (_LAYERS - 1)  # 0 deepest, 1 top
        x0, y0 = w / 2 - off * np.sin(th), h / 2 + off * np.cos(th)
        radius, gain = rf * rng.uniform(0.8, 1.2, keep.size), rng.uniform(0.85, 1.1, keep.size)
        seeds = np.stack([x0, y0, th, radius, gain * (0.3 + 0.7 * depth**1.3)])
        pts = _paths(rng, seeds, float(np.hypot(h, w)), 0.15)
        val, alpha = _tubes(pts, shape)
        if depth < 0.9:
            blur = 0.3 + 1.5 * (1 - depth) ** 1.5
            val, alpha = ndi.gaussian_filter(val, blur), ndi.gaussian_filter(alpha, blur)
        layers.append((val, alpha, pts))
    yy, xx = np.mgrid[0:h, 0:w].astype(_F32) / max(h, w)
    bg = rng.uniform(0.05, 0.1) + rng.uniform(-0.04, 0.04) * xx + rng.uniform(-0.04, 0.04) * yy
    for _ in range(3):
        kx, ky = rng.normal(0, 4, 2)
        bg += 0.012 * np.cos(kx * xx + ky * yy + rng.uniform(0, 2 * np.pi))
    return layers, bg.astype(_F32), rf


def _inside(pts: np.ndarray, shape: tuple[int, int], m: float) -> np.ndarray:
    """Indices of centreline samples at least m px inside the visible (unpadded) image."""
    (h, w), x, y = shape, pts[0], pts[1]
    return np.flatnonzero((x > _PAD + m) & (x < w - _PAD - m) & (y > _PAD + m) & (y < h - _PAD - m))


def _spot(rng: np.random.Generator, shape: tuple[int, int], m: float) -> tuple[float, float]:
    """A random point at least m px inside the visible image (less if the image is small)."""
    h, w = shape
    m = min(m, (min(h, w) - 2 * _PAD) / 2 - 1)
    return rng.uniform(_PAD + m, w - _PAD - m), rng.uniform(_PAD + m, h - _PAD - m)


def _bead(rng: np.random.Generator, layers: list, shape: tuple[int, int], rf: float) -> _Defect:
    """1-3 spindles on top-layer fibres, aligned with the fibre, 3-5 fibre diameters wide."""
    pm, al, core = np.zeros(shape, _F32), np.zeros(shape, _F32), np.zeros(shape, bool)
    for _ in range(rng.integers(1, 4)):
        b = max(min(2 * rf * rng.uniform(1.5, 2.5), (min(shape) - 2 * _PAD) / 10), 2 * rf)
        a = b * rng.uniform(1.6, 2.4)
        pts = next((lay[2] for lay in reversed(layers) if _inside(lay[2], shape, a).size), None)
        if pts is None:
            (cx, cy), th = _spot(rng, shape, a), rng.uniform(0, np.pi)
            tx, ty, r = np.cos(th), np.sin(th), 0.5  # no fibre here: a free spindle
        else:
            cx, cy, tx, ty, r, _ = pts[:, rng.choice(_inside(pts, shape, a))]
        win, yy, xx = _window(shape, cx, cy, a + 2)
        t, n = (xx - cx) * tx + (yy - cy) * ty, (xx - cx) * ty - (yy - cy) * tx
        wt = r + (b - r) * np.clip(1 - (t / a) ** 2, 0, 1) ** 1.5
        # fades out where the spindle is no wider than its fibre: the fibre itself shows there
        ab = np.clip(wt - np.abs(n) + 0.5, 0, 1) * np.clip(wt - r - 0.5, 0, 1)
        side = np.clip(n / wt, -1, 1) * (ty * _LIGHT[0] - tx * _LIGHT[1])
        v = rng.uniform(1.0, 1.15) * _profile(np.clip(np.abs(n) / wt, 0, 1), side)
        pm[win], al[win] = pm[win] * (1 - ab) + v * ab, al[win] + ab * (1 - al[win])
        core[win] |= ab > 0.5
    return pm, al, core, _LAYERS


def _film(rng: np.random.Generator, layers: list, shape: tuple[int, int], rf: float) -> _Defect:
    """A semi-transparent membrane filling a mesh cell between the fibres of the top two layers,
    tucked under them (a free blob if no cell fits), with a brighter rim."""
    h, w = shape
    free = np.maximum(layers[-1][1], layers[-2][1]) < 0.5
    comp, n = ndi.label(free)
    count = np.bincount(comp.ravel(), minlength=n + 1)
    area = count / ((h - 2 * _PAD) * (w - 2 * _PAD))
    border = np.ones(shape, bool)
    border[_PAD + 2 : h - _PAD - 2, _PAD + 2 : w - _PAD - 2] = False
    area[np.unique(comp[border])] = 0  # cells cut by the image border
    inscribed = ndi.maximum(ndi.distance_transform_edt(free), comp, np.arange(n + 1))
    cells = np.flatnonzero((area > 0.015) & (area < 0.06) & (inscribed > 0.4 * np.sqrt(count)))
    if cells.size:
        foot = comp == rng.choice(cells)
    else:
        r0 = np.sqrt(rng.uniform(0.02, 0.05) * (h - 2 * _PAD) * (w - 2 * _PAD) / np.pi)
        cx, cy = _spot(rng, shape, r0)
        foot = _dome(rng, cx, cy, r0, 1.0, shape)[1] > 0.5
    foot = ndi.binary_dilation(foot, iterations=int(rf) + 1)
    soft = ndi.gaussian_filter(foot.astype(_F32), 0.8)
    rim = np.clip(2 * (1 - ndi.gaussian_filter(soft, 2.0)), 0, 1)
    yy, xx = np.mgrid[0:h, 0:w].astype(_F32) / 20
    ripple = np.cos(xx * rng.normal() + yy * rng.normal() + rng.uniform(0, 6.3))
    val = rng.uniform(0.38, 0.5) + 0.2 * rim + 0.03 * ripple
    al = soft * rng.uniform(0.6, 0.8)
    return (val * al).astype(_F32), al.astype(_F32), soft > 0.5, _LAYERS - 2


def _clump(rng: np.random.Generator, layers: list, shape: tuple[int, int], rf: float) -> _Defect:
    """A dense tangle of short, thick, bent fibre pieces around an irregular blob."""
    rc = min(rf * rng.uniform(8, 12), (min(shape) - 2 * _PAD) / 8)
    cx, cy = _spot(rng, shape, rc)
    pm, al = _dome(rng, cx, cy, rc * rng.uniform(0.3, 0.45), 0.8, shape)
    n = int(rng.integers(10, 18))
    ang, dist = rng.uniform(0, 2 * np.pi, n), rc * np.sqrt(rng.uniform(0, 0.6, n))
    x0, y0, th = cx + dist * np.cos(ang), cy + dist * np.sin(ang), rng.uniform(0, 2 * np.pi, n)
    radius = min(rf, rc / 4) * rng.uniform(1.2, 1.8, n)
    seeds = np.stack([x0, y0, th, radius, rng.uniform(0.9, 1.15, n)])
    vp, ap = _tubes(_paths(rng, seeds, rc * rng.uniform(0.6, 0.9), 0.8, 0.5), shape)
    pm, al = pm * (1 - ap) + vp, al + ap * (1 - al)
    return pm, al, al > 0.5, _LAYERS


def _particle(rng: np.random.Generator, layers: list, shape: tuple[int, int], rf: float) -> _Defect:
    """1-4 small roughly round bright particles lying on top of the mat."""
    pm, al = np.zeros(shape, _F32), np.zeros(shape, _F32)
    for _ in range(rng.integers(1, 5)):
        r0 = min(rf * rng.uniform(2.3, 3.5), (min(shape) - 2 * _PAD) / 12)
        v, a = _dome(rng, *_spot(rng, shape, r0 + 1), r0, 0.3, shape)
        pm, al = pm * (1 - a) + v * rng.uniform(1.0, 1.15), al + a * (1 - al)
    return pm, al, al > 0.5, _LAYERS


_DRAW = {"bead": _bead, "film": _film, "clump": _clump, "particle": _particle}


def draw_sample(
    rng: np.random.Generator, width: int, height: int, defect: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """One micrograph (H, W) float32 in [0, 1] and the boolean mask of the defect's pixels.
    Scene, defect and noise use separate sub-streams of rng, so the same rng state with and
    without a defect gives the same mat and the same noise: they differ only at the defect."""
    if defect is not None and defect not in _DRAW:
        raise DataError(f"unknown defect {defect!r}; known: {', '.join(DEFECTS)}")
    if width < 16 or height < 16:
        raise DataError(f"image size {width}x{height} too small (minimum 16x16)")
    r_scene, r_defect, r_noise = rng.spawn(3)
    shape = (height + 2 * _PAD, width + 2 * _PAD)
    layers, img, rf = _scene(r_scene, shape)
    stack = [(v, a) for v, a, _ in layers]
    mask = np.zeros(shape, bool)
    if defect is not None:
        pm, al, mask, depth = _DRAW[defect](r_defect, layers, shape, rf)
        for _, a in stack[depth:]:
            mask &= a < 0.5  # hidden under fibres lying above it
        stack.insert(depth, (pm, al))
    for v, a in stack:  # each layer shades what lies below it, then covers it
        img = img * (1 - 0.3 * ndi.gaussian_filter(a, 2.0)) * (1 - a) + v
    crop = (slice(_PAD, _PAD + height), slice(_PAD, _PAD + width))
    img = ndi.gaussian_filter(img, 0.5)[crop]  # beam spot
    noise = r_noise.standard_normal(img.shape, dtype=_F32)
    img = img + np.sqrt(0.004 * np.clip(img, 0, None) + 0.0003) * noise  # shot + detector noise
    img += r_noise.normal(0, 0.008, (height, 1)).astype(_F32)  # scan-line jitter
    img = ndi.gaussian_filter(img, 0.5)
    return np.clip(img, 0, 1).astype(_F32), mask[crop]


def draw_normal(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A defect-free micrograph (H, W) float32 in [0, 1]."""
    return draw_sample(rng, width, height, None)[0]


def _banner(rng: np.random.Generator, width: int, bh: int) -> np.ndarray:
    """An SEM info strip: black, with white acquisition text and a scale bar."""
    im = Image.new("L", (width, bh), 0)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=max(6, int(bh * 0.55)))
    kv, mag = rng.choice([5, 10, 15, 20]), rng.choice([2000, 5000, 10000, 20000])
    fields = [f"HV {kv}.0 kV", f"WD {rng.uniform(4, 12):.1f} mm", f"mag {mag} x", "det SE"]
    label, bar = f"{int(rng.choice([1, 2, 5]))} um", max(4, width * 0.12)
    x1 = width - bh * 0.4 - bar
    x_label = x1 - draw.textlength(label, font=font) - bh * 0.3
    draw.rectangle((x1, bh * 0.45, x1 + bar, bh * 0.45 + max(1, bh // 8)), fill=255)
    draw.text((x_label, bh * 0.2), label, 255, font)
    while fields and draw.textlength("   ".join(fields), font=font) > x_label - bh:
        fields.pop()  # narrow images keep what fits
    draw.text((bh * 0.3, bh * 0.2), "   ".join(fields), 255, font)
    return np.asarray(im, _F32) / 255


def write_dataset(
    out: Path,
    *,
    n_train: int,
    n_test_good: int,
    n_test_per_defect: int,
    size: tuple[int, int],
    seed: int,
    banner: bool = False,
    progress: bool = True,
    defects: Sequence[str] = DEFECTS,
) -> dict[str, int]:
    """Write an MVTec AD layout (train/good, test/<type>, ground_truth/<type>/NNN_mask.png) plus
    synth.json. Image i of split s uses rng([seed, s, i]), independent of the other counts. The
    dataset is built in a hidden sibling folder and swapped in whole, so OUT never holds a
    half-written file or a mix of two runs."""
    out = Path(out).resolve()
    width, height = (int(v) for v in size)
    if min(width, height) < 32:
        raise DataError(f"size {width}x{height} too small: both sides must be >= 32 px")
    if min(n_train, n_test_good, n_test_per_defect, seed) < 0:
        raise DataError("image counts and seed must be >= 0")
    if bad := [d for d in defects if d not in DEFECTS]:
        raise DataError(f"unknown defect {bad[0]!r}; known: {', '.join(DEFECTS)}")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _is_synth(out))):
        raise DataError(f"{out} exists and is not a synth dataset; refusing to overwrite it")
    jobs = [("train", "good", 0, n_train), ("test", "good", 1, n_test_good)]
    jobs += [("test", d, 2 + DEFECTS.index(d), n_test_per_defect) for d in defects]
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    stage.chmod(0o755)
    from tqdm import tqdm

    bar = tqdm(total=sum(j[3] for j in jobs), desc="synth", unit="img", disable=not progress)
    try:
        for split, kind, split_id, count in jobs:
            (stage / split / kind).mkdir(parents=True)
            if kind != "good":
                (stage / "ground_truth" / kind).mkdir(parents=True)
            for i in range(count):
                rng = np.random.default_rng([seed, split_id, i])
                bh = max(3, round(0.07 * height)) if banner else 0
                img, mask = draw_sample(rng, width, height - bh, None if kind == "good" else kind)
                if banner:
                    img = np.vstack([img, _banner(rng, width, bh)])
                    mask = np.vstack([mask, np.zeros((bh, width), bool)])
                name = f"{i:03d}.png"
                Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(
                    stage / split / kind / name
                )
                if kind != "good":
                    gt = stage / "ground_truth" / kind / name.replace(".png", "_mask.png")
                    Image.fromarray(mask.astype(np.uint8) * 255).save(gt)
                bar.update()
        counts = {f"{split}/{kind}": count for split, kind, _, count in jobs}
        meta = {"generator": _GENERATOR, "version": SYNTH_VERSION, "seed": seed}
        meta |= {"size": [width, height], "banner": banner, "counts": counts}
        (stage / "synth.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{stage.name[-8:]}")
            os.replace(out, old)
            os.replace(stage, out)
            shutil.rmtree(old)
        else:
            os.replace(stage, out)
    finally:
        bar.close()
        shutil.rmtree(stage, ignore_errors=True)
    return counts


def _is_synth(root: Path) -> bool:
    try:
        return json.loads((root / "synth.json").read_text()).get("generator") == _GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def contact_sheet(root: Path, out: Path, *, per_row: int = 6, tile: int = 160) -> Path:
    """One PNG for people: a row of good test images, then a row per defect type with the
    ground-truth outline in red and a label on each tile."""
    root, out = Path(root), Path(out)
    good = root / "test" / "good" if (root / "test" / "good").is_dir() else root / "train" / "good"
    order = {d: i for i, d in enumerate(DEFECTS)}
    kinds = [p.name for p in (root / "test").glob("*") if p.is_dir() and p.name != "good"]
    kinds.sort(key=lambda k: (order.get(k, len(order)), k))
    rows = [("good", sorted(good.glob("*.png"))[:per_row])]
    rows += [(k, sorted((root / "test" / k).glob("*.png"))[:per_row]) for k in kinds]
    rows = [r for r in rows if r[1]]
    if not rows:
        raise DataError(f"no images under {root}")
    sheet = Image.new("RGB", (per_row * tile, len(rows) * tile), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=max(8, min(16, tile // 12)))
    for r, (kind, files) in enumerate(rows):
        for c, f in enumerate(files):
            im = ImageOps.contain(Image.open(f).convert("RGB"), (tile, tile))
            rgb, gt = np.array(im), root / "ground_truth" / kind / f"{f.stem}_mask.png"
            if gt.exists():
                m = np.asarray(Image.open(gt).convert("L").resize(im.size, Image.NEAREST)) > 127
                rgb[m & ~ndi.binary_erosion(m)] = (255, 40, 40)
            xy = (c * tile + (tile - im.width) // 2, r * tile + (tile - im.height) // 2)
            sheet.paste(Image.fromarray(rgb), xy)
            draw.text((c * tile + 3, r * tile + 2), f"{kind} {f.stem}", (255, 255, 0), font)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, out)
    return out
