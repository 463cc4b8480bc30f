"""Synthetic SEM micrographs of electrospun nanofibre mats, with defects and exact masks.

The demo and test data of nanoinspect: the model learns from defect-free mats and must find
beads, films, clumps, particles and beaded mats it never saw. The look (magnification,
density, background, microscope) is a named domain of `training.domains`. Deterministic by
seed; numpy, scipy, Pillow.
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

from models.atomic import replacing
from models.errors import DataError
from training import synth_effects as fx
from training.domains import DEFAULT_DOMAIN, Domain, get_domain
from training.synth_defects import DRAW
from training.synth_shapes import F32, PAD, layer_blur, layer_depth, paths, tubes

DEFECTS: tuple[str, ...] = ("bead", "film", "clump", "particle", "beaded")
SYNTH_VERSION = 2
_GENERATOR = "nanoinspect.training.synth"


def _scene(
    rng: np.random.Generator, shape: tuple[int, int], dom: Domain, r_look: np.random.Generator
) -> tuple[list, np.ndarray, float]:
    """Background and fibre layers (deepest first) as (premult, alpha, centreline points).
    Fibres follow a line process: direction weighted by the projected width, offset uniform,
    so their density is even and their count scales with the image's perimeter."""
    h, w = shape
    nl = dom.layers
    rf = rng.uniform(*dom.fibre_radius)
    n = max(2, round(rng.uniform(*dom.density) * (h + w) / (np.pi * rf * nl)))
    axis = r_look.uniform(0, np.pi)  # of an aligned mat
    layers = []
    for k in range(nl):
        if dom.alignment:
            th = (axis + dom.alignment * rng.standard_normal(4 * n + 8)) % np.pi
        else:
            th = rng.uniform(0, np.pi, 4 * n + 8)
        width = w * np.abs(np.sin(th)) + h * np.abs(np.cos(th))
        keep = np.flatnonzero(rng.uniform(0, np.hypot(h, w), th.size) < width)[:n]
        th, off = th[keep], rng.uniform(-0.5, 0.5, keep.size) * width[keep]
        depth = layer_depth(k, nl)
        x0, y0 = w / 2 - off * np.sin(th), h / 2 + off * np.cos(th)
        radius, gain = rf * rng.uniform(0.8, 1.2, keep.size), rng.uniform(0.85, 1.1, keep.size)
        dim = dom.deep_gain + (1 - dom.deep_gain) * depth**1.3
        seeds = np.stack([x0, y0, th, radius, gain * dim])
        pts = paths(rng, seeds, float(np.hypot(h, w)), dom.wiggle, wavelength=dom.wavelength)
        val, alpha = tubes(pts, shape)
        if blur := layer_blur(dom, depth):
            val, alpha = ndi.gaussian_filter(val, blur), ndi.gaussian_filter(alpha, blur)
        layers.append((val, alpha, pts))
    yy, xx = np.mgrid[0:h, 0:w].astype(F32) / max(h, w)
    bg = rng.uniform(*dom.background)
    bg = bg + rng.uniform(-0.04, 0.04) * xx + rng.uniform(-0.04, 0.04) * yy
    for _ in range(3):
        kx, ky = rng.normal(0, 4, 2)
        bg += 0.012 * np.cos(kx * xx + ky * yy + rng.uniform(0, 2 * np.pi))
    if dom.substrate:
        bg += fx.substrate(r_look, shape, dom)
    return layers, bg.astype(F32), rf


def draw_sample(
    rng: np.random.Generator,
    width: int,
    height: int,
    defect: str | None,
    domain: str | Domain = DEFAULT_DOMAIN,
) -> tuple[np.ndarray, np.ndarray]:
    """One micrograph (H, W) float32 in [0, 1] of the named domain and the boolean mask of the
    defect's pixels. Scene, defect and noise use separate sub-streams of rng, so the same rng
    state with and without a defect gives the same mat and the same noise: they differ only
    at the defect."""
    dom = get_domain(domain)
    if defect is not None and defect not in DRAW:
        raise DataError(f"unknown defect {defect!r}; known: {', '.join(DEFECTS)}")
    if width < 16 or height < 16:
        raise DataError(f"image size {width}x{height} too small (minimum 16x16)")
    r_scene, r_defect, r_noise = rng.spawn(3)
    (r_look,) = r_scene.spawn(1)  # the domain's effects; leaves classic's streams untouched
    shape = (height + 2 * PAD, width + 2 * PAD)
    layers, img, rf = _scene(r_scene, shape, dom, r_look)
    stack = [(v, a) for v, a, _ in layers]
    mask = np.zeros(shape, bool)
    if defect is not None:
        parts = DRAW[defect](r_defect, layers, shape, rf, dom)
        for pm, al, seen, depth in sorted(parts, key=lambda p: -p[3]):  # top first: indices hold
            for _, a, _ in layers[depth:]:
                seen &= a < 0.5  # hidden under fibres lying above it
            mask |= seen
            stack.insert(depth, (pm, al))
    for v, a in stack:  # each layer shades what lies below it, then covers it
        img = img * (1 - 0.3 * ndi.gaussian_filter(a, 2.0)) * (1 - a) + v
    if dom.glow:
        img = img + fx.glow(r_look, np.maximum(layers[-1][1], layers[-2 % len(layers)][1]), dom)
    img = fx.defocus(img, r_look, dom)  # the beam spot, widened by defocus
    if dom.line_shift:
        shifts = fx.line_shifts(r_look, shape[0], dom, PAD)
        img, mask = fx.shift_lines(img, shifts), fx.shift_lines(mask, shifts)
    crop = (slice(PAD, PAD + height), slice(PAD, PAD + width))
    img, mask = img[crop], mask[crop]
    if dom.contrast != (1.0, 1.0) or dom.brightness != (0.0, 0.0):
        img = fx.exposure(img, r_look, dom)
    if dom.streaks:
        img = img + fx.streaks(r_look, img.shape, dom)
    noise = r_noise.standard_normal(img.shape, dtype=F32)
    img = img + np.sqrt(dom.shot_noise * np.clip(img, 0, None) + dom.read_noise) * noise
    img += r_noise.normal(0, dom.line_noise, (height, 1)).astype(F32)  # scan-line offsets
    img = ndi.gaussian_filter(img, 0.5)
    return np.clip(img, 0, 1).astype(F32), mask


def draw_normal(
    rng: np.random.Generator, width: int, height: int, domain: str | Domain = DEFAULT_DOMAIN
) -> np.ndarray:
    """A defect-free micrograph (H, W) float32 in [0, 1]."""
    return draw_sample(rng, width, height, None, domain)[0]


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
    return np.asarray(im, F32) / 255


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
    defects: Sequence[str] | None = None,
    domain: str | Domain = DEFAULT_DOMAIN,
) -> dict[str, int]:
    """Write an MVTec AD layout (train/good, test/<type>, ground_truth/<type>/NNN_mask.png) plus
    synth.json. Image i of split s uses rng([seed, s, i]), independent of the other counts. The
    dataset is built in a hidden sibling folder and swapped in whole, so OUT never holds a
    half-written file or a mix of two runs. Defects default to the domain's list (classic:
    the four original types, so its data sets stay as they were; the others: all five)."""
    out = Path(out).resolve()
    dom = get_domain(domain)
    if defects is None:
        defects = DEFECTS if dom.defects is None else dom.defects
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
                _write_sample(stage, split, kind, i, rng, (width, height), banner, dom)
                bar.update()
        counts = {f"{split}/{kind}": count for split, kind, _, count in jobs}
        meta = {"generator": _GENERATOR, "version": SYNTH_VERSION, "seed": seed}
        meta |= {"domain": dom.name, "domain_params": dom.params()}
        meta |= {"size": [width, height], "banner": banner, "counts": counts}
        (stage / "synth.json").write_text(json.dumps(meta, indent=2) + "\n")
        _swap_in(stage, out)
    finally:
        bar.close()
        shutil.rmtree(stage, ignore_errors=True)
    return counts


def _write_sample(
    stage: Path,
    split: str,
    kind: str,
    i: int,
    rng: np.random.Generator,
    size: tuple[int, int],
    banner: bool,
    dom: Domain,
) -> None:
    """Image i of split/kind, drawn from rng, and for a defect its ground-truth mask."""
    width, height = size
    bh = max(3, round(0.07 * height)) if banner else 0
    defect = None if kind == "good" else kind
    img, mask = draw_sample(rng, width, height - bh, defect, dom)
    if banner:
        img = np.vstack([img, _banner(rng, width, bh)])
        mask = np.vstack([mask, np.zeros((bh, width), bool)])
    name = f"{i:03d}.png"
    Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(stage / split / kind / name)
    if kind != "good":
        gt = stage / "ground_truth" / kind / name.replace(".png", "_mask.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(gt)


def _swap_in(stage: Path, out: Path) -> None:
    """The finished folder in place of OUT, whole: a reader sees the old data set or the new."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{stage.name[-8:]}")
        os.replace(out, old)
        os.replace(stage, out)
        shutil.rmtree(old)
    else:
        os.replace(stage, out)


def _is_synth(root: Path) -> bool:
    try:
        return json.loads((root / "synth.json").read_text()).get("generator") == _GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def _around(mask: np.ndarray, w: int, h: int) -> tuple[int, int, int, int]:
    """A w x h box inside the image, centred on the largest region of mask."""
    lab, n = ndi.label(mask)
    big = lab == 1 + np.argmax(np.bincount(lab.ravel())[1:]) if n else np.ones_like(mask)
    ys, xs = np.nonzero(big)
    (hh, ww), w, h = mask.shape, min(w, mask.shape[1]), min(h, mask.shape[0])
    x0 = int(np.clip((xs.min() + xs.max() - w) / 2, 0, ww - w))
    y0 = int(np.clip((ys.min() + ys.max() - h) / 2, 0, hh - h))
    return x0, y0, x0 + w, y0 + h


def contact_sheet(
    root: Path,
    out: Path,
    *,
    per_row: int = 6,
    tile: int | tuple[int, int] = 160,
    detail: float | None = None,
) -> Path:
    """One PNG for people: a row of good test images, then a row per defect type with the
    ground-truth outline in red and a label on each tile. tile: a side, or (width, height)
    to fit wide micrographs without bands. detail: defect tiles show a window of detail x
    tile px around the largest defect region instead of the whole image, so that small
    defects in large micrographs stay visible."""
    root, out = Path(root), Path(out)
    tw, th = (tile, tile) if isinstance(tile, int) else tile
    good = root / "test" / "good" if (root / "test" / "good").is_dir() else root / "train" / "good"
    order = {d: i for i, d in enumerate(DEFECTS)}
    kinds = [p.name for p in (root / "test").glob("*") if p.is_dir() and p.name != "good"]
    kinds.sort(key=lambda k: (order.get(k, len(order)), k))
    rows = [("good", sorted(good.glob("*.png"))[:per_row])]
    rows += [(k, sorted((root / "test" / k).glob("*.png"))[:per_row]) for k in kinds]
    rows = [r for r in rows if r[1]]
    if not rows:
        raise DataError(f"no images under {root}")
    sheet = Image.new("RGB", (per_row * tw, len(rows) * th), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=max(8, min(16, min(tw, th) // 12)))
    for r, (kind, files) in enumerate(rows):
        for c, f in enumerate(files):
            im, label = Image.open(f).convert("RGB"), f"{kind} {f.stem}"
            gt = root / "ground_truth" / kind / f"{f.stem}_mask.png"
            gm = Image.open(gt).convert("L") if gt.exists() else None
            if gm is not None and detail:
                box = _around(np.asarray(gm) > 127, round(tw * detail), round(th * detail))
                im, gm = im.crop(box), gm.crop(box)
                label += f" ({box[2] - box[0]}x{box[3] - box[1]} px)"
            im = ImageOps.contain(im, (tw, th))
            rgb = np.array(im)
            if gm is not None:
                m = np.asarray(gm.resize(im.size, Image.NEAREST)) > 127
                rgb[m & ~ndi.binary_erosion(m)] = (255, 40, 40)
            xy = (c * tw + (tw - im.width) // 2, r * th + (th - im.height) // 2)
            sheet.paste(Image.fromarray(rgb), xy)
            draw.text((c * tw + 3, r * th + 2), label, (255, 255, 0), font)
    with replacing(out) as (tmp,):
        sheet.save(tmp, format="PNG")
    return out
