"""Student architecture as data: one dataclass, the paper's 224² network by default."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from facekit.errors import UserError


@dataclass(frozen=True)
class StudentConfig:
    """Channels of MobileFaceSwap (SPEC §3). Narrower lists give small networks for experiments."""

    resolution: int = 224
    encoder_channels: tuple[int, ...] = (3, 32, 64, 128, 256, 512)
    mask_channels: tuple[int, ...] = (512, 128, 64, 32, 8, 2)
    identity_dim: int = 512  # embedding size = channels of the 7x7 identity feature map

    def __post_init__(self) -> None:
        if self.resolution <= 0 or self.resolution % 32:
            raise UserError(f"student resolution must be a positive multiple of 32, got {self.resolution}")
        if len(self.encoder_channels) != 6 or self.encoder_channels[0] != 3:
            raise UserError(f"encoder_channels must list 6 widths starting at 3, got {list(self.encoder_channels)}")
        if len(self.mask_channels) != 6 or self.mask_channels[0] != self.encoder_channels[-1]:
            raise UserError("mask_channels must list 6 widths starting at the bottleneck width")

    @property
    def decoder_in(self) -> tuple[int, ...]:
        """Decoder input widths: the bottleneck, then each level's output concatenated with its skip."""
        c = self.encoder_channels
        return (c[5], 2 * c[4], 2 * c[3], 2 * c[2])

    @property
    def decoder_out(self) -> tuple[int, ...]:
        c = self.encoder_channels
        return (c[4], c[3], c[2], c[1])

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StudentConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown student config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# The final head narrows the first level's width to a quarter before its RGB convs (official layout: 32 -> 8 -> 3).
# A quarter-width student would squeeze every pixel through 2 channels there: backgrounds came out 35x worse
# (L1 0.029 vs 0.0008 after 600 distill steps at 64²). Narrow students keep 16 at the first level (-> 4).
FIRST_LEVEL_MIN = 16


def scaled(config: StudentConfig, width: float) -> StudentConfig:
    """A narrower (or wider) network with the same structure; the identity dimension is unchanged."""
    if width <= 0:
        raise UserError(f"width multiplier must be positive, got {width}")
    if width == 1.0:
        return config
    grow = lambda channels: tuple(max(2, round(c * width)) for c in channels)  # noqa: E731
    first, *rest = grow(config.encoder_channels[1:])
    encoder = (3, max(first, min(FIRST_LEVEL_MIN, config.encoder_channels[1])), *rest)
    mask = (encoder[-1], *grow(config.mask_channels[1:-1]), config.mask_channels[-1])
    return dataclasses.replace(config, encoder_channels=encoder, mask_channels=mask)
