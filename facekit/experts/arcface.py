"""The identity expert D_I: SimSwap's IR-SE ResNet ArcFace (shared by DiffFace and MobileFaceSwap).

Module and parameter names follow the original so that SimSwap's `Arcface.tar` (torch) and MobileFaceSwap's
`arcface.pdparams` (Paddle, renamed in `facekit.checkpoints`) load unchanged. The network returns both the
embedding z (teacher conditioning, identity losses) and the 7x7 map F after `bn2` (the student's weight
prediction), so teacher and student live in one identity space.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """[0,1] RGB -> ImageNet-standardised, the input convention of both ArcFace and the face parser."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def resize_to(images: torch.Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Differentiable resize that is a no-op when the size already matches."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == size:
        return images
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(images, size=size, mode=mode, align_corners=False, antialias=True)
    return F.interpolate(images, size=size, mode=mode)


class SEBlock(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.PReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc(self.avg_pool(x).flatten(1))
        return x * scale[:, :, None, None]


class IRBlock(nn.Module):
    """Improved-residual block BN-conv-BN-PReLU-conv-BN + SE; the single PReLU is applied twice, as upstream."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.prelu = nn.PReLU()
        self.conv2 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.se = SEBlock(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
        out = self.se(self.bn2(self.conv2(out)))
        residual = x if self.downsample is None else self.downsample(x)
        return self.prelu(out + residual)


class IRSEArcFace(nn.Module):
    """IR-SE ResNet ArcFace. forward: RGB [0,1] Bx3xHxW (any H, W) -> (L2-normalised z [B,512], F [B,C,7,7])."""

    embedding_space = "irse-arcface"

    def __init__(
        self,
        blocks: tuple[int, ...] = (3, 4, 23, 3),
        widths: tuple[int, ...] = (64, 128, 256, 512),
        embedding_dim: int = 512,
        input_size: int = 112,
    ):
        super().__init__()
        if len(blocks) != 4 or len(widths) != 4:
            raise ValueError("IRSEArcFace needs four stages: blocks and widths of length 4")
        self.input_size = input_size
        # 3x3 valid conv, 2x2 pool, three stride-2 stages: 112 -> 110 -> 55 -> 28 -> 14 -> 7.
        self.map_size = _feature_map_size(input_size)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.prelu = nn.PReLU()
        self.maxpool = nn.MaxPool2d(2, 2)
        in_channels = widths[0]
        for index, (count, width) in enumerate(zip(blocks, widths)):
            stride = 1 if index == 0 else 2
            layers = [IRBlock(in_channels, width, stride)] + [IRBlock(width, width) for _ in range(count - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*layers))
            in_channels = width
        self.bn2 = nn.BatchNorm2d(widths[-1])
        self.dropout = nn.Dropout()
        self.fc = nn.Linear(widths[-1] * self.map_size**2, embedding_dim)
        self.bn3 = nn.BatchNorm1d(embedding_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features(imagenet_normalize(resize_to(images, self.input_size)))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network alone, on an input already resized and normalised (samplers that reproduce another
        code base's preprocessing call this)."""
        x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        feature_map = self.bn2(x)
        embedding = self.bn3(self.fc(self.dropout(feature_map).flatten(1)))
        return F.normalize(embedding, dim=1), feature_map


def _feature_map_size(input_size: int) -> int:
    size = (input_size - 2) // 2  # valid 3x3 conv, then 2x2 max-pool
    for _ in range(3):  # stride-2 3x3 convs with padding 1
        size = (size - 1) // 2 + 1
    return size
