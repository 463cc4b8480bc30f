"""What an exported model carries in its ONNX metadata_props, and the check that refuses an
artifact this code does not understand. Torch-free: the service reads it."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from models.errors import ArtifactError
from models.images import crop_setting

FORMAT = "nanoinspect-bigan"
FORMAT_VERSION = 5  # 2: feature-likelihood and statistics terms; 3: width; 4: bodies term;
# 5: D maps at 1/disc_stride, `score` is the map's peak off the edge band, unweighted terms left out
INPUTS = ("image", "alpha", "sigma")
OUTPUTS = ("score_map", "score", "reconstruction", "d_map", "f_map", "t_map", "b_map")


@dataclass(frozen=True)
class ArtifactMeta:
    name: str
    alpha: float  # weight of the discriminator term
    sigma: float  # Gaussian smoothing of the pixel map, in pixels
    sigma_max: float  # largest sigma the in-graph kernel represents faithfully
    pixel_threshold: float  # gamma: Omega = score_map > gamma
    image_threshold: float  # tau: is_anomalous = score > tau
    min_area: int  # regions of Omega smaller than this (pixels) are dropped
    stride: int  # E's downsampling factor; images are reflect-padded to a multiple
    halo: int  # px (working scale) a pixel's score looks around it: tiles overlap by this
    r_scale: float  # mean |G(E(s)) - s| on held-out normal images (divided out in the graph)
    d_scale: float  # mean (D~ - 1)^2 on held-out normal images (divided out in the graph)
    f_scale: float  # mean feature Mahalanobis^2 on held-out normals (divided out in the graph)
    t_scale: float  # mean local-statistics Mahalanobis^2 on held-out normals (likewise)
    b_scale: float  # mean bodies map on held-out normals (likewise)
    term_weights: list[float]  # (w_0, w_f, w_t, w_b): BiGAN, features, statistics, bodies
    model_config: dict[str, Any]
    train_config: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)  # how the numbers above were set
    fibre_scale: float = 0.0  # models.scale of the training images; inputs are zoomed to it
    views: int = 1  # flips of the image d and r are averaged over (models.scoring.FLIPS)
    sample_bits: int = 16  # significant bits of the training images' 16-bit data: untagged
    # 16-bit inputs are read at this depth (models.images), as training read them
    # models.ood.NormalModel of the held-out normals, fitted at calibration ({}: none)
    normal_model: dict[str, Any] = field(default_factory=dict)
    # [alpha, sigma, gamma] per point of a grid of overrides: gamma flags the share of normal
    # pixels the model's own does, so the map drawn at an override is masked as strictly
    # ([]: none; models of an earlier version add a tau, unused: the verdict is the model's)
    thresholds: list[list[float]] = field(default_factory=list)
    data_digest: str = ""  # sha256 of the training images
    code_version: str = ""
    created: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_props(self) -> dict[str, str]:
        return {
            k: json.dumps(v) if isinstance(v, dict | list) else str(v)
            for k, v in asdict(self).items()
        }

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> ArtifactMeta:
        if props.get("format") != FORMAT:
            raise ArtifactError(f"{source}: not a nanoinspect model (metadata 'format' missing)")
        version = int(props.get("format_version", "0"))
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"{source}: model format version {version}, this code reads {FORMAT_VERSION}"
            )
        missing = [
            f.name
            for f in fields(cls)
            if f.name not in props and f.default is MISSING and f.default_factory is MISSING
        ]
        if missing:
            raise ArtifactError(f"{source}: metadata lacks {', '.join(missing)}")
        values: dict[str, Any] = {}
        try:
            for f in fields(cls):
                if f.name not in props:
                    continue  # an optional field: its default
                raw = props[f.name]
                kind = str(f.type)
                values[f.name] = (
                    json.loads(raw)
                    if kind.startswith(("dict", "list"))
                    else int(raw)
                    if kind == "int"
                    else float(raw)
                    if kind == "float"
                    else raw
                )
        except ValueError as e:
            raise ArtifactError(f"{source}: unreadable metadata: {e}") from None
        return cls(**values)

    @property
    def crop_bottom(self) -> int | float:
        """The SEM banner crop the model was trained with (rows or a fraction: crop_setting):
        every surface crops its inputs the same way unless told otherwise."""
        return crop_setting(self.train_config.get("crop_bottom", 0.0))

    def pixel_threshold_for(self, alpha: float, sigma: float) -> float | None:
        """gamma calibrated for the map at alpha and sigma: the model's own at its settings,
        else the table's, else None."""
        if (alpha, sigma) == (self.alpha, self.sigma):
            return self.pixel_threshold
        for a, s, gamma, *_ in self.thresholds:
            if abs(a - alpha) < 1e-6 and abs(s - sigma) < 1e-6:
                return gamma
        return None

    def calibrated_settings(self) -> list[tuple[float, float]]:
        """Every (alpha, sigma) with a calibrated gamma, the model's own first."""
        table = [(a, s) for a, s, *_ in self.thresholds if (a, s) != (self.alpha, self.sigma)]
        return [(self.alpha, self.sigma), *table]

    def with_(self, **changes: Any) -> ArtifactMeta:
        return replace(self, **changes)
