"""Dense face-swap generators for scale, built from their published architectures with random weights.

Latency does not depend on weight values, so a randomly initialised network of the same shape is a
fair stand-in for timing and counting. `SimSwapGenerator` follows SimSwap's 224² generator
(neuralchen/SimSwap, `Generator_Adain_Upsample`, 9 AdaIN residual blocks, not "deep"): a 7×7 stem,
three stride-2 3×3 convs to 512 channels at 28², nine residual blocks whose instance-normalised
convs are restyled by the 512-d identity latent, three bilinear-upsample + 3×3 conv stages and a 7×7
head. `width` scales every channel count (1.0 = the published network) for quick smoke tests.
"""
from __future__ import annotations

import torch
from torch import nn


class InstanceNorm(nn.Module):
    """Parameter-free instance normalisation (SimSwap's own, epsilon inside the root)."""

    def __init__(self, epsilon: float = 1e-8):
        super().__init__()
        self.epsilon = epsilon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=(2, 3), keepdim=True)
        return x * torch.rsqrt(x.pow(2).mean(dim=(2, 3), keepdim=True) + self.epsilon)


class AdaINResBlock(nn.Module):
    """x + [pad, conv3x3, IN, style, ReLU, pad, conv3x3, IN, style]; a style is a per-channel scale and shift."""

    def __init__(self, channels: int, latent: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), InstanceNorm())
        self.conv2 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), InstanceNorm())
        self.style1 = nn.Linear(latent, 2 * channels)
        self.style2 = nn.Linear(latent, 2 * channels)

    @staticmethod
    def _restyle(x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        scale, shift = style.view(x.shape[0], 2, x.shape[1], 1, 1).unbind(1)
        return x * (scale + 1.0) + shift

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self._restyle(self.conv1(x), self.style1(latent)))
        return x + self._restyle(self.conv2(y), self.style2(latent))


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU())


def _up_conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), *_conv_bn_relu(c_in, c_out, 1))


class SimSwapGenerator(nn.Module):
    """(target [B,3,H,W] in [0,1], identity latent [B,512]) -> swapped image [B,3,H,W] in [0,1]."""

    def __init__(self, width: float = 1.0, blocks: int = 9, latent: int = 512):
        super().__init__()
        c64, c128, c256, c512 = (max(2, round(c * width)) for c in (64, 128, 256, 512))
        self.stem = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, c64, 7), nn.BatchNorm2d(c64), nn.ReLU())
        self.down = nn.Sequential(_conv_bn_relu(c64, c128, 2), _conv_bn_relu(c128, c256, 2), _conv_bn_relu(c256, c512, 2))
        self.blocks = nn.ModuleList(AdaINResBlock(c512, latent) for _ in range(blocks))
        self.up = nn.Sequential(_up_conv_bn_relu(c512, c256), _up_conv_bn_relu(c256, c128), _up_conv_bn_relu(c128, c64))
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(c64, 3, 7), nn.Tanh())

    def forward(self, target: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        x = self.down(self.stem(target))
        for block in self.blocks:
            x = block(x, latent)
        return (self.head(self.up(x)) + 1.0) / 2.0
