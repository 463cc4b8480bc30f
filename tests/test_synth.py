"""Synthetic SEM data: determinism, exact masks, the MVTec layout on disk, refusals, the
domains (each its own look, classic unchanged) and the `synth` command."""

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from typer.testing import CliRunner

from cli import app
from models.errors import DataError
from training import synth
from training.domains import DEFAULT_DOMAIN, DOMAINS, get_domain

KINDS = [None, *synth.DEFECTS]
ORIGINAL = ("bead", "film", "clump", "particle")  # classic's default set, as before domains


def draw(seed: int, kind: str | None, w: int = 96, h: int = 80) -> tuple[np.ndarray, np.ndarray]:
    return synth.draw_sample(np.random.default_rng(seed), w, h, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_image_other_seed_other_image(kind):
    a, ma = draw(3, kind)
    b, mb = draw(3, kind)
    c, _ = draw(4, kind)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert np.abs(a - c).mean() > 0.02


@pytest.mark.parametrize("kind", KINDS)
def test_dtype_range_shape_on_odd_size(kind):
    img, mask = draw(5, kind, w=97, h=61)
    assert img.shape == mask.shape == (61, 97)
    assert img.dtype == np.float32 and mask.dtype == bool
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert mask.any() == (kind is not None)


def test_normal_is_a_mat_not_noise():
    img = synth.draw_normal(np.random.default_rng(0), 128, 128)
    bright = img > 0.3  # fibres; the background sits near 0.1
    assert 0.15 < bright.mean() < 0.7
    assert img[~bright].mean() < 0.2 < img[bright].mean()


@pytest.mark.parametrize("kind", synth.DEFECTS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_is_exactly_where_the_defect_changed_the_image(kind, seed):
    # same rng state with and without the defect: same mat, same noise, so the difference
    # is the defect alone
    good, empty = draw(seed, None, 128, 128)
    bad, mask = draw(seed, kind, 128, 128)
    assert not empty.any()
    diff = np.abs(bad - good)
    changed = diff > 0.08
    near = ndi.binary_dilation(mask, iterations=2)  # anti-aliased rims, slight blur
    assert changed.sum() > 20
    assert changed[near].sum() >= 0.97 * changed.sum(), "defect pixels outside the mask"
    assert (diff[mask] > 0.03).mean() > 0.6, "mask pixels the defect did not change"
    assert 30 <= mask.sum() <= 0.15 * mask.size, "not a speck, not most of the image"


def test_bad_arguments_to_draw():
    with pytest.raises(DataError):
        draw(0, "scratch")
    with pytest.raises(DataError):
        draw(0, None, w=8, h=64)


def _write(out: Path, **kw) -> dict[str, int]:
    args = dict(n_train=3, n_test_good=2, n_test_per_defect=2, size=(48, 40), seed=1)
    return synth.write_dataset(out, **{**args, **kw, "progress": False})


def test_write_dataset_layout(tmp_path):
    counts = _write(tmp_path / "ds")
    root = tmp_path / "ds"
    assert counts == {"train/good": 3, "test/good": 2} | {f"test/{d}": 2 for d in ORIGINAL}
    assert sorted(p.name for p in (root / "train" / "good").iterdir()) == [
        "000.png",
        "001.png",
        "002.png",
    ]
    assert sorted(p.name for p in (root / "test").iterdir()) == sorted(["good", *ORIGINAL])
    assert not (root / "ground_truth" / "good").exists()
    for d in ORIGINAL:
        for img_path in sorted((root / "test" / d).iterdir()):
            img = Image.open(img_path)
            mask = Image.open(root / "ground_truth" / d / f"{img_path.stem}_mask.png")
            assert img.mode == mask.mode == "L" and img.size == mask.size == (48, 40)
            values = np.unique(np.asarray(mask))
            assert set(values) <= {0, 255} and 255 in values
    meta = json.loads((root / "synth.json").read_text())
    assert meta["seed"] == 1 and meta["size"] == [48, 40] and meta["counts"] == counts
    assert meta["domain"] == "classic" and meta["domain_params"]["layers"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name != "ds"], "temporary files left behind"


def test_write_dataset_is_deterministic_and_indices_independent(tmp_path):
    _write(tmp_path / "a")
    _write(tmp_path / "b")
    _write(tmp_path / "c", n_train=1, n_test_good=0)
    name = "test/bead/001.png"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()
    a, b = (np.asarray(Image.open(tmp_path / "a" / f"train/good/00{i}.png")) for i in (0, 1))
    assert not np.array_equal(a, b)


def test_rewrite_replaces_previous_output(tmp_path):
    _write(tmp_path / "ds")
    _write(tmp_path / "ds", n_train=1, n_test_per_defect=1)
    assert [p.name for p in (tmp_path / "ds" / "train" / "good").iterdir()] == ["000.png"]
    assert len(list((tmp_path / "ds" / "ground_truth" / "bead").iterdir())) == 1


def test_banner_strip_is_dark_with_marks_and_masked_out(tmp_path):
    _write(tmp_path / "ds", size=(160, 120), banner=True)
    img = np.asarray(Image.open(tmp_path / "ds/test/particle/000.png"))
    mask = np.asarray(Image.open(tmp_path / "ds/ground_truth/particle/000_mask.png"))
    strip = img[-8:]  # 7 % of 120 px
    assert (strip < 40).mean() > 0.7 and (strip > 200).any()
    assert not mask[-8:].any() and mask.any()


@pytest.mark.parametrize(
    "kw",
    [
        {"size": (31, 64)},
        {"n_train": -1},
        {"defects": ("bead", "scratch")},
    ],
)
def test_write_dataset_refuses_bad_arguments(tmp_path, kw):
    with pytest.raises(DataError):
        _write(tmp_path / "ds", **kw)
    assert not (tmp_path / "ds").exists()


def test_write_dataset_refuses_to_overwrite_foreign_data(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.tif").write_bytes(b"x")
    (tmp_path / "file").write_bytes(b"x")
    for out in (tmp_path / "mine", tmp_path / "file"):
        with pytest.raises(DataError):
            _write(out)
    assert (tmp_path / "mine" / "precious.tif").read_bytes() == b"x"
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty")
    assert (tmp_path / "empty" / "synth.json").exists()


def test_contact_sheet(tmp_path):
    _write(tmp_path / "ds", n_test_per_defect=3)
    out = synth.contact_sheet(tmp_path / "ds", tmp_path / "sheet.png", per_row=4, tile=64)
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == (5 * 64, 4 * 64, 3)  # good + one row per defect
    red = (sheet[..., 0] > 200) & (sheet[..., 1] < 80) & (sheet[..., 2] < 80)
    assert not red[:64].any() and all(red[64 * r : 64 * (r + 1)].any() for r in range(1, 5))
    with pytest.raises(DataError):
        synth.contact_sheet(tmp_path / "nothing", tmp_path / "x.png")


# --- domains --------------------------------------------------------------------------------

# Digests of what the generator drew before domains existed (main at fed6f5a): classic, the
# default, must keep drawing exactly these pixels, so older data sets and the bundled model's
# card stay valid. Pixels as written (8-bit), so only a real change of the drawing moves them.
CLASSIC_DATASET_SHA256 = "3e67562edab306e9c4cd688e98ca52d47613b2f67e0e60d551b64acdbec79920"
CLASSIC_DRAWS_SHA256 = "f36eae861093cb9218037f0e54eab2d211044f8856589e0d985aa45a9d5b9759"


def _pixels_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(np.asarray(Image.open(p)).tobytes())
    return h.hexdigest()


def test_classic_draws_exactly_what_the_generator_drew_before_domains(tmp_path):
    assert DEFAULT_DOMAIN == "classic"
    synth.write_dataset(
        tmp_path / "ds",
        n_train=2,
        n_test_good=1,
        n_test_per_defect=2,
        size=(160, 120),
        seed=11,
        progress=False,
    )
    assert _pixels_digest(tmp_path / "ds") == CLASSIC_DATASET_SHA256
    for domain in (None, "classic", DOMAINS["classic"]):
        h = hashlib.sha256()
        for kind in [None, *ORIGINAL]:
            rng = np.random.default_rng(21)
            args = (rng, 300, 200, kind) if domain is None else (rng, 300, 200, kind, domain)
            img, mask = synth.draw_sample(*args)
            h.update(np.rint(img * 255).astype(np.uint8).tobytes())
            h.update(mask.tobytes())
        assert h.hexdigest() == CLASSIC_DRAWS_SHA256, domain


def test_domain_registry():
    assert synth.DEFECTS == ("bead", "film", "clump", "particle", "beaded")
    assert len(DOMAINS) >= 6 and next(iter(DOMAINS)) == DEFAULT_DOMAIN
    for name, dom in DOMAINS.items():
        assert dom.name == name and dom.summary and "\n" not in dom.summary
        assert dom.defects is None or set(dom.defects) <= set(synth.DEFECTS)
        with pytest.raises(dataclasses.FrozenInstanceError):
            dom.layers = 1  # type: ignore[misc]
    assert get_domain("noisy") is DOMAINS["noisy"]
    with pytest.raises(DataError, match="known: classic, fine"):
        get_domain("nope")
    with pytest.raises(DataError, match="unknown domain"):
        synth.draw_sample(np.random.default_rng(0), 64, 64, None, "nope")


@pytest.mark.parametrize("name", list(DOMAINS))
def test_each_domain_is_deterministic_by_seed(name):
    for kind in (None, "beaded", "film"):
        a, ma = synth.draw_sample(np.random.default_rng(3), 112, 80, kind, name)
        b, mb = synth.draw_sample(np.random.default_rng(3), 112, 80, kind, name)
        c, _ = synth.draw_sample(np.random.default_rng(4), 112, 80, kind, name)
        assert np.array_equal(a, b) and np.array_equal(ma, mb)
        assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
        assert np.abs(a - c).mean() > 0.01


def test_domains_look_different_from_each_other():
    imgs = {n: synth.draw_normal(np.random.default_rng(7), 160, 112, n) for n in DOMAINS}
    names = list(imgs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(imgs[a] - imgs[b]).mean() > 0.02, (a, b)


def _look(name: str, seed: int) -> dict[str, float]:
    """A few measures a person would use to tell the looks apart."""
    img = synth.draw_normal(np.random.default_rng(seed), 320, 224, name)
    p10, p90 = np.percentile(img, [10, 90])
    fine_detail = float(np.std(img - ndi.gaussian_filter(img, 1.5)))
    s = ndi.gaussian_filter(img, 1.0) - img.mean()  # fibre width: autocorrelation half-width
    ac = np.fft.irfft(np.abs(np.fft.rfft(s, axis=1)) ** 2, axis=1).mean(0)
    gy, gx = np.gradient(ndi.gaussian_filter(img, 1.5))  # one dominant direction or none
    jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
    return {
        "dark": float(p10),
        "noise": fine_detail / float(p90 - p10),
        "width": float(np.argmax(ac / ac[0] < 0.5)),
        "coherence": float(np.hypot(jxx - jyy, 2 * jxy) / (jxx + jyy)),
        "range": float(np.percentile(img, 99.5) - np.percentile(img, 0.5)),
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_domains_have_the_look_they_promise(seed):
    look = {n: _look(n, seed) for n in DOMAINS}
    classic = look["classic"]
    assert look["coarse"]["width"] > 2 * look["fine"]["width"]
    assert look["fine"]["width"] < classic["width"] < look["coarse"]["width"]
    assert look["substrate"]["dark"] > classic["dark"] + 0.05  # no dark voids
    assert look["noisy"]["noise"] > 1.5 * classic["noise"]
    assert look["aligned"]["coherence"] > max(0.8, classic["coherence"] + 0.3)
    assert look["charging"]["range"] > classic["range"] + 0.1


@pytest.mark.parametrize("name", [n for n in DOMAINS if n != "classic"])
@pytest.mark.parametrize("kind", synth.DEFECTS)
def test_mask_is_exact_in_every_domain(name, kind):
    # as test_mask_is_exactly_where_the_defect_changed_the_image, in each domain: thresholds
    # scale with the domain's contrast, the allowed spread with its defocus blur
    dom = DOMAINS[name]
    gain, blur = dom.contrast[0], float(np.hypot(0.5, dom.focus[1]))
    good, empty = synth.draw_sample(np.random.default_rng(1), 256, 192, None, name)
    bad, mask = synth.draw_sample(np.random.default_rng(1), 256, 192, kind, name)
    assert not empty.any()
    diff = np.abs(bad - good)
    changed = diff > 0.08 * gain
    near = ndi.binary_dilation(mask, iterations=2 + int(np.ceil(2 * blur)))
    far = ~ndi.binary_dilation(mask, iterations=10 + int(np.ceil(4 * blur)))
    assert changed.sum() > 20
    assert changed[near].sum() >= 0.97 * changed.sum(), "defect pixels outside the mask"
    assert diff[far].max() < 0.08 * gain, "the image changed far from the defect"
    assert (diff[mask] > 0.03 * gain).mean() > 0.6, "mask pixels the defect did not change"
    assert 30 <= mask.sum() <= 0.2 * mask.size


def test_beaded_is_many_small_beads_over_the_whole_image():
    _, mask = synth.draw_sample(np.random.default_rng(5), 512, 352, "beaded", "classic")
    labels, n = ndi.label(mask)
    sizes = np.bincount(labels.ravel())[1:]
    assert n >= 20 and np.median(sizes) < 0.002 * mask.size
    ys, xs = np.nonzero(mask)
    assert np.ptp(xs) > 0.7 * mask.shape[1] and np.ptp(ys) > 0.7 * mask.shape[0]


@pytest.mark.slow
@pytest.mark.parametrize("kind", synth.DEFECTS)
def test_defect_sizes_follow_the_magnification(kind):
    # at the microscope's 1024x704 one defect covers roughly 0.1-5 % of the image, larger
    # where the fibres are wider (coarse: 12-20 px) than where they are thin (fine: 2-3 px)
    area = {}
    for name in ("fine", "coarse"):
        _, mask = synth.draw_sample(np.random.default_rng(2), 1024, 704, kind, name)
        area[name] = mask.mean()
        assert 0.0005 < area[name] < 0.05, (name, area[name])
    if kind != "beaded":  # beaded covers a share of the image at any magnification
        assert area["coarse"] > 2 * area["fine"]


def test_write_dataset_records_the_domain_and_draws_its_defects(tmp_path):
    counts = _write(tmp_path / "ds", domain="noisy", n_train=1, n_test_good=1)
    assert counts == {"train/good": 1, "test/good": 1} | {f"test/{d}": 2 for d in synth.DEFECTS}
    meta = json.loads((tmp_path / "ds" / "synth.json").read_text())
    assert meta["domain"] == "noisy" and meta["domain_params"]["line_shift"] > 0
    mask = np.asarray(Image.open(tmp_path / "ds/ground_truth/beaded/000_mask.png"))
    assert set(np.unique(mask)) == {0, 255}
    img = np.asarray(Image.open(tmp_path / "ds/test/beaded/000.png"), np.float32) / 255
    want, _ = synth.draw_sample(np.random.default_rng([1, 6, 0]), 48, 40, "beaded", "noisy")
    assert np.abs(img - want).max() <= 0.5 / 255 + 1e-6  # image i of split s: rng([seed, s, i])
    _write(tmp_path / "c", domain="classic", defects=synth.DEFECTS, n_train=0, n_test_good=0)
    assert (tmp_path / "c" / "test" / "beaded").is_dir()
    custom = dataclasses.replace(DOMAINS["coarse"], name="mine", layers=2)
    _write(tmp_path / "m", domain=custom, n_train=1, n_test_good=0, defects=("clump",))
    meta = json.loads((tmp_path / "m" / "synth.json").read_text())
    assert meta["domain"] == "mine" and meta["domain_params"]["layers"] == 2
    with pytest.raises(DataError, match="unknown domain"):
        _write(tmp_path / "x", domain="nope")
    assert not (tmp_path / "x").exists()


def test_contact_sheet_of_wide_images_with_detail_windows(tmp_path):
    _write(tmp_path / "ds", size=(320, 220), n_test_per_defect=2, defects=("particle",))
    out = synth.contact_sheet(
        tmp_path / "ds", tmp_path / "s.png", per_row=2, tile=(88, 60), detail=2
    )
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == (2 * 60, 2 * 88, 3)
    red = (sheet[..., 0] > 200) & (sheet[..., 1] < 80) & (sheet[..., 2] < 80)
    assert not red[:60].any() and red[60:].any()


# --- the command ----------------------------------------------------------------------------


def test_cli_lists_the_domains():
    result = CliRunner().invoke(app, ["synth", "--list-domains"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(DOMAINS)
    for line, dom in zip(lines, DOMAINS.values(), strict=True):
        assert line.endswith(dom.summary)


def test_cli_draws_the_named_domain(tmp_path):
    out = tmp_path / "ds"
    args = ["synth", str(out), "--domain", "coarse", "--size", "96x64", "--n-train", "1"]
    result = CliRunner().invoke(app, [*args, "--n-test-good", "1", "--n-test-per-defect", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "synth.json").read_text())["domain"] == "coarse"
    assert (out / "test" / "beaded").is_dir() and (out / "contact_sheet.png").exists()
    want, _ = synth.draw_sample(np.random.default_rng([0, 0, 0]), 96, 64, None, "coarse")
    got = np.asarray(Image.open(out / "train" / "good" / "000.png"), np.float32) / 255
    assert np.abs(got - want).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize(
    "args, message",
    [
        (["--domain", "nope"], "unknown domain 'nope'; known: " + ", ".join(DOMAINS)),
        (["--defects", "bead,scratch"], "unknown defect 'scratch'"),
        ([], "missing OUT"),
    ],
)
def test_cli_refuses_with_one_line(tmp_path, args, message):
    out = [] if not args else [str(tmp_path / "ds")]
    result = CliRunner().invoke(app, ["synth", *out, *args, "--n-train", "1"])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {message}")
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("kind", ["film", "clump", "beaded"])
def test_mask_follows_the_scan_line_jitter(kind):
    # strong jitter (lines displaced by several px): the mask must move with the image
    dom = dataclasses.replace(DOMAINS["noisy"], name="jittery", line_shift=4.0)
    good, _ = synth.draw_sample(np.random.default_rng(2), 256, 192, None, dom)
    bad, mask = synth.draw_sample(np.random.default_rng(2), 256, 192, kind, dom)
    changed = np.abs(bad - good) > 0.08 * dom.contrast[0]
    assert changed[ndi.binary_dilation(mask, iterations=1)].sum() >= 0.95 * changed.sum()
    assert changed[mask].mean() > 0.6
