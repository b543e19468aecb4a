"""The identity injection network (IIN): identity -> the IDN's 18 identity-specific conv weights.

Depthwise kernels are *predicted* from the 512x7x7 identity feature map; pointwise weights are shared
weights *modulated* by the 512-d embedding and demodulated (StyleGAN2), as in SPEC §3. Module and
parameter names follow the official `BuildFaceSwap`, so its checkpoint maps one-to-one.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from student.idn import LEAKY_SLOPE

DEMOD_EPS = 1e-16


class ConvBlock(nn.Module):
    """conv3x3 -> BN -> LReLU carries the features on; a parallel conv3x3 reads a kernel off them."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm = nn.BatchNorm2d(c_out)
        self.relu = nn.LeakyReLU(LEAKY_SLOPE)
        self.weight = nn.Conv2d(c_out, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.relu(self.norm(self.conv(x)))
        return out, self.weight(out)


class WeightPredictor(nn.Module):
    """Feature map [B,D,7,7] -> depthwise kernels: encoder [B,C,4,4] per level, decoder [B,C,3,3].

    Each kernel is a shared base plus the identity's predicted deviation. The bases are ours, not the
    official layout's (importing official weights sets them to 0, which is exactly the official network):
    without them every tap of every kernel, down to the first layer's, has to come out of five stacked
    conv-BN blocks fed by the identity map, and from scratch the network cannot even learn to copy its
    input (measured on one batch of 64² faces, 100 Adam steps at lr 2e-3 with the predictor at 0.05x: L1 0.105
    without bases, 0.06 with them; see tests/test_distill.py). The deviations start small (weight convs ×0.1)
    so the bases shape the network first.
    """

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int], dim: int = 512):
        super().__init__()
        self.first = nn.Conv2d(dim, dim, 4)  # 7x7 -> 4x4: the encoder kernels' size
        self.first_decoder = nn.Conv2d(dim, dim, 2)  # 4x4 -> 3x3: the decoder kernels' size
        self.norm = nn.BatchNorm2d(dim)
        self.decoder_norm = nn.BatchNorm2d(dim)
        self.relu = nn.LeakyReLU(LEAKY_SLOPE)
        enc = [dim, *reversed(encoder_channels)]  # deepest level first; reversed again on output
        self.encoder = nn.ModuleList(ConvBlock(a, b) for a, b in zip(enc[:-1], enc[1:]))
        dec = [dim, *decoder_channels]
        self.decoder = nn.ModuleList(ConvBlock(a, b) for a, b in zip(dec[:-1], dec[1:]))
        self.encoder_base = nn.ParameterList(nn.Parameter(_kernel_init(c, 4)) for c in encoder_channels)
        self.decoder_base = nn.ParameterList(nn.Parameter(_kernel_init(c, 3)) for c in decoder_channels)
        with torch.no_grad():
            for block in (*self.encoder, *self.decoder):
                block.weight.weight.mul_(0.1)
                block.weight.bias.mul_(0.1)

    def forward(self, feature_map: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        z = self.relu(self.norm(self.first(feature_map)))
        encoder_kernels = []
        x = z
        for block in self.encoder:
            x, kernel = block(x)
            encoder_kernels.append(kernel)
        decoder_kernels = []
        y = self.relu(self.decoder_norm(self.first_decoder(z)))
        for block in self.decoder:
            y, kernel = block(y)
            decoder_kernels.append(kernel)
        encoder_kernels = [k + base for k, base in zip(encoder_kernels[::-1], self.encoder_base)]
        decoder_kernels = [k + base for k, base in zip(decoder_kernels, self.decoder_base)]
        return encoder_kernels, decoder_kernels


BASE_KERNELS = ("predictor.encoder_base.", "predictor.decoder_base.")


def _kernel_init(channels: int, size: int) -> torch.Tensor:
    """torch's default depthwise-conv init (kaiming uniform, a=√5: U(±1/size))."""
    return torch.empty(channels, size, size).uniform_(-1.0 / size, 1.0 / size)


class ModulatedPointwise(nn.Module):
    """One pointwise weight, scaled per input channel by the identity and demodulated per output."""

    def __init__(self, c_in: int, c_out: int, dim: int = 512):
        super().__init__()
        self.style = nn.Linear(dim, c_in)
        self.weight = nn.Parameter(torch.empty(c_out, c_in, 1, 1))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        nn.init.zeros_(self.style.bias)
        nn.init.normal_(self.style.weight, std=0.01)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """embedding [B,D] -> weights [B, c_out, c_in, 1, 1]."""
        scale = self.style(embedding)[:, None, :, None, None]
        weight = self.weight[None] * (scale + 1.0)
        return weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + DEMOD_EPS)
