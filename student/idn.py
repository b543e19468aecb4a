"""The identity-aware dynamic network (IDN): MobileFaceSwap's per-frame U-Net (SPEC §3).

`run_idn` is the one forward pass. The static network (`SwapNet`, an identity baked in) and the
training-time network (per-sample identity weights) only differ in how each level's convolutions get
their weights, so both call it with different level callables.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from student.config import StudentConfig

Level = Callable[[torch.Tensor], torch.Tensor]

LEAKY_SLOPE = 0.1


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


class FinalHead(nn.Sequential):
    """Upsample, 1x1 conv + BN + LeakyReLU, then the RGB convs; indices match the official `final` Sequential,
    so checkpoint names (`final.1.weight`, ...) line up.

    In eval mode the 1x1 conv and its BatchNorm (then a per-pixel affine map) run before the upsampling: they
    commute with it exactly (bilinear weights sum to one), so this is the same function with the upsampling on
    a quarter of the channels and the conv on a quarter of the pixels. Training keeps the official order (batch
    statistics would differ)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        upsample, conv, norm, activation, *rgb = self
        x = activation(upsample(norm(conv(x))))
        for layer in rgb:
            x = layer(x)
        return x


def build_final_head(channels: int) -> FinalHead:
    return FinalHead(
        nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=True),
        nn.Conv2d(channels, channels // 4, 1),
        nn.BatchNorm2d(channels // 4),
        nn.LeakyReLU(LEAKY_SLOPE),
        nn.Conv2d(channels // 4, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.LeakyReLU(LEAKY_SLOPE),
        nn.Conv2d(3, 3, 3, padding=1),
        nn.Tanh(),
    )


def build_mask_head(channels: Sequence[int]) -> nn.Sequential:
    """Weakly semantic fusion head: five up/depthwise/pointwise blocks, then a 3x3 conv to one channel."""
    blocks: list[nn.Module] = [
        nn.Sequential(
            nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=True),
            nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in),
            nn.Conv2d(c_in, c_out, 1),
            nn.BatchNorm2d(c_out),
            nn.LeakyReLU(LEAKY_SLOPE),
        )
        for c_in, c_out in zip(channels[:-1], channels[1:])
    ]
    return nn.Sequential(*blocks, nn.Conv2d(channels[-1], 1, 3, padding=1), nn.Sigmoid())


def run_idn(
    target: torch.Tensor,
    encoder: Sequence[Level],
    decoder: Sequence[Level],
    final: nn.Module,
    mask_head: nn.Module,
    fuse: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """target in [0,1] -> (swapped image in [0,1], fusion mask); output = image·M + target·(1−M).
    fuse=False returns the generated image before fusion (training supervises it directly)."""
    x = (target - 0.5) / 0.5
    skips = []
    for level in encoder:
        x = F.leaky_relu(level(x), LEAKY_SLOPE)
        skips.append(x)
    mask = mask_head(x.detach())
    y = x
    for i, level in enumerate(decoder):
        y = F.leaky_relu(level(upsample2x(y)), LEAKY_SLOPE)
        if i < len(decoder) - 1:
            y = torch.cat((y, skips[len(decoder) - 1 - i]), dim=1)
    image = (1.0 + final(y)) / 2.0
    return (fuse_with_target(image, mask, target) if fuse else image), mask


def fuse_with_target(image: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return image * mask + target * (1.0 - mask)


def identity_weight_shapes(config: StudentConfig) -> dict[str, tuple[int, ...]]:
    """The 18 identity-specific conv weights, named as in the static network (stable export names)."""
    c = config.encoder_channels
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(5):
        shapes[f"Encoder.{i}.0.weight"] = (c[i], 1, 4, 4)
        shapes[f"Encoder.{i}.1.weight"] = (c[i + 1], c[i], 1, 1)
    for i, (c_in, c_out) in enumerate(zip(config.decoder_in, config.decoder_out)):
        shapes[f"Decoder.{i}.0.weight"] = (c_in, 1, 3, 3)
        shapes[f"Decoder.{i}.1.weight"] = (c_out, c_in, 1, 1)
    return shapes


class SwapNet(nn.Module):
    """The static per-identity network: plain convs holding one identity's weights (for inference/export).

    Parameter names follow the official static UNet (`reference/mobilefaceswap_unet_static.tsv`); the
    biases of the identity convs are zero, as in the official inference.
    """

    def __init__(self, config: StudentConfig):
        super().__init__()
        self.config = config
        c = config.encoder_channels
        self.Encoder = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c[i], c[i], 4, 2, 1, groups=c[i]), nn.Conv2d(c[i], c[i + 1], 1)) for i in range(5)
        )
        self.Decoder = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_in, 3, 1, 1, groups=c_in), nn.Conv2d(c_in, c_out, 1))
            for c_in, c_out in zip(config.decoder_in, config.decoder_out)
        )
        for level in (*self.Encoder, *self.Decoder):
            for conv in level:
                nn.init.zeros_(conv.bias)
        self.final = build_final_head(config.decoder_out[-1])
        self.mask = build_mask_head(config.mask_channels)

    def forward(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return run_idn(target, self.Encoder, self.Decoder, self.final, self.mask)
