"""Named looks of SEM nanofibre mats for `training.synth`: one frozen set of generator
parameters each, so a quality benchmark can span magnifications, mats and microscopes
instead of being tuned to one look. `classic` is the generator's original look."""

from __future__ import annotations

from dataclasses import dataclass, fields

from models.errors import DataError

Range = tuple[float, float]  # drawn uniformly per image
_NOT_PARAMS = ("name", "summary")


@dataclass(frozen=True)
class Domain:
    """Generator parameters of one look; the defaults are the `classic` look. Lengths in px."""

    name: str
    summary: str
    # the mat
    fibre_radius: Range = (2.2, 3.0)  # per image; real mats: 2-20 px wide at 1024 px
    density: Range = (0.55, 0.8)  # fibres per layer, relative to the image's size and radius
    layers: int = 5  # depth layers, the deeper the dimmer and blurrier
    depth_blur: float = 1.5  # extra blur of the deepest layer
    deep_gain: float = 0.3  # brightness of the deepest layer relative to the top one
    wiggle: float = 0.15  # amplitude of each of three heading sinusoids (rad): straightness
    wavelength: Range = (0.6, 3.5)  # of those sinusoids, in units of 250 px
    alignment: float = 0.0  # 0: isotropic; else spread (rad) of directions about one axis
    # the background
    background: Range = (0.05, 0.1)  # level of the voids or the substrate
    substrate: float = 0.0  # contrast of a grainy substrate (a filter, a foil); 0: dark voids
    grain: float = 2.0  # substrate grain size
    # the microscope
    contrast: Range = (1.0, 1.0)  # gain on the rendered scene
    brightness: Range = (0.0, 0.0)  # offset added after the gain
    shot_noise: float = 0.004  # noise variance per unit of signal
    read_noise: float = 0.0003  # detector noise variance
    line_noise: float = 0.008  # std of each scan line's brightness offset
    line_shift: float = 0.0  # scan-line jitter: std of each line's horizontal displacement
    focus: Range = (0.0, 0.0)  # defocus blur sigma
    glow: float = 0.0  # charging: brightness of glowing patches over the mat
    streaks: float = 0.0  # charging: mean number of bright trailing streaks per 1000 lines
    # defects
    legacy_sizes: bool = False  # classic's original sizes (films 1.5-6 % of any image)
    defects: tuple[str, ...] | None = None  # written by default; None: every type

    def params(self) -> dict:
        """The generator parameters, for synth.json."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_PARAMS}


_ORIGINAL_DEFECTS = ("bead", "film", "clump", "particle")

DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in (
        Domain(
            "classic",
            "the original look: 5 layers of 4-6 px fibres over dark voids, mild noise",
            legacy_sizes=True,
            defects=_ORIGINAL_DEFECTS,
        ),
        Domain(
            "fine",
            "low magnification: dense mat of 2-3 px fibres in 8 layers",
            fibre_radius=(1.0, 1.5),
            density=(0.8, 1.0),
            layers=8,
            depth_blur=0.8,
            deep_gain=0.35,
            wiggle=0.12,
        ),
        Domain(
            "coarse",
            "high magnification: sparse 12-20 px fibres in 3 layers, visibly out of focus",
            fibre_radius=(6.0, 10.0),
            density=(0.45, 0.6),
            layers=3,
            depth_blur=4.0,
            wiggle=0.08,
            wavelength=(1.5, 4.0),
            focus=(1.2, 2.2),
        ),
        Domain(
            "substrate",
            "sparse fibres lying on a grainy, brighter substrate (a filter or a foil)",
            fibre_radius=(2.0, 3.5),
            density=(0.12, 0.2),
            layers=2,
            deep_gain=0.85,
            depth_blur=0.4,
            background=(0.2, 0.28),
            substrate=0.08,
            grain=1.6,
            contrast=(1.15, 1.3),
            brightness=(-0.04, 0.0),
        ),
        Domain(
            "noisy",
            "low dose: strong detector noise, scan-line jitter, low contrast on grey",
            contrast=(0.45, 0.6),
            brightness=(0.12, 0.2),
            shot_noise=0.03,
            read_noise=0.004,
            line_noise=0.03,
            line_shift=0.8,
        ),
        Domain(
            "charging",
            "a charging sample: glowing patches and bright horizontal streaks, high contrast",
            background=(0.02, 0.05),
            contrast=(1.15, 1.3),
            brightness=(-0.02, 0.0),
            glow=0.4,
            streaks=20.0,
        ),
        Domain(
            "curly",
            "wavy, crimped fibres of medium density in 4 layers",
            density=(0.45, 0.6),
            layers=4,
            wiggle=0.5,
            wavelength=(0.25, 0.7),
        ),
        Domain(
            "aligned",
            "fibres spun onto a rotating collector: nearly parallel, straight, 5 layers",
            density=(0.6, 0.85),
            wiggle=0.06,
            alignment=0.15,
        ),
    )
}
DEFAULT_DOMAIN = "classic"


def get_domain(domain: str | Domain) -> Domain:
    """The Domain of a name (or the Domain itself); an unknown name is the user's mistake."""
    if isinstance(domain, Domain):
        return domain
    try:
        return DOMAINS[domain]
    except (KeyError, TypeError):
        raise DataError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}") from None
