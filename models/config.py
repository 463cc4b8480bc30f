"""The small config that builds the networks. Saved in every checkpoint and in the ONNX
metadata, so a model is always rebuilt from the config that made it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class ModelConfig:
    channels: int = 16  # width after the stem; doubles at each downsampling, capped at 8x
    latent_channels: int = 16  # C_z: channels of the latent map (H/stride x W/stride)
    depth: int = 3  # number of stride-2 stages; stride = 2**depth (DESIGN: 8)
    disc_channels: int = 16  # width of the discriminator's image branch
    disc_stride: int = 4  # D's map is 1/disc_stride of the image: a power of 2, <= stride

    def __post_init__(self) -> None:
        if self.disc_stride < 1 or self.disc_stride & (self.disc_stride - 1):
            raise ValueError(f"disc_stride must be a power of 2, not {self.disc_stride}")
        if self.disc_stride > self.stride:
            raise ValueError(f"disc_stride {self.disc_stride} exceeds the stride {self.stride}")

    @property
    def stride(self) -> int:
        return 2**self.depth

    @property
    def disc_level(self) -> int:
        """The resolution level of D's map: log2(disc_stride)."""
        return self.disc_stride.bit_length() - 1

    def widths(self, base: int) -> list[int]:
        """Channels at each resolution level, from full resolution down to the latent."""
        return [min(base * 2**i, base * 8) for i in range(self.depth + 1)]

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**values)
