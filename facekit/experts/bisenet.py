"""The face-parsing expert D_F: BiSeNet (ResNet-18 context path) over the 19 CelebAMask-HQ classes.

Names follow zllrunning/face-parsing.PyTorch, whose `79999_iter.pth` is DiffFace's `FaceParser.pth`.
`width` scales every channel count so tests and the synthetic world can run a small parser of the same code.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from facekit.experts.arcface import imagenet_normalize, resize_to

CLASS_NAMES = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)
# DiffFace's semantic guidance and target-preserving mask: the inner face, without glasses, ears or hair.
KEPT_CLASSES = (1, 2, 3, 4, 5, 10, 11, 12, 13)
# What the student's fusion mask must leave to the target: everything that is not the face region a swap
# may change. Glasses (6) count as face: they sit on the swapped area and MobileFaceSwap repaints them.
BACKGROUND_CLASSES = (0, 7, 8, 9, 14, 15, 16, 17, 18)


def class_mask(labels_or_logits: torch.Tensor, classes: Iterable[int]) -> torch.Tensor:
    """Float {0,1} mask [B,1,H,W] of the pixels whose label is in `classes`.

    Accepts labels [B,H,W] / [H,W] (integer) or logits [B,C,H,W] (argmax taken, so not differentiable).
    """
    labels = labels_or_logits
    if labels.is_floating_point():
        if labels.dim() != 4:
            raise ValueError("class_mask: logits must be [B, C, H, W]")
        labels = labels.argmax(1)
    if labels.dim() == 2:
        labels = labels[None]
    wanted = torch.as_tensor(tuple(classes), device=labels.device, dtype=labels.dtype)
    return torch.isin(labels, wanted)[:, None].float()


class ConvBNReLU(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNet18(nn.Module):
    def __init__(self, widths: tuple[int, int, int, int]):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = widths[0]
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            setattr(self, f"layer{index + 1}", nn.Sequential(BasicBlock(in_channels, width, stride), BasicBlock(width, width)))
            in_channels = width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinementModule(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels)
        self.conv_atten = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))


class ContextPath(nn.Module):
    def __init__(self, widths: tuple[int, int, int, int], head: int):
        super().__init__()
        self.resnet = ResNet18(widths)
        self.arm16 = AttentionRefinementModule(widths[2], head)
        self.arm32 = AttentionRefinementModule(widths[3], head)
        self.conv_head32 = ConvBNReLU(head, head)
        self.conv_head16 = ConvBNReLU(head, head)
        self.conv_avg = ConvBNReLU(widths[3], head, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = F.interpolate(self.conv_avg(F.adaptive_avg_pool2d(feat32, 1)), feat32.shape[2:], mode="nearest")
        feat32_up = F.interpolate(self.arm32(feat32) + avg, feat16.shape[2:], mode="nearest")
        feat32_up = self.conv_head32(feat32_up)
        feat16_up = F.interpolate(self.arm16(feat16) + feat32_up, feat8.shape[2:], mode="nearest")
        return feat8, self.conv_head16(feat16_up), feat32_up


class FeatureFusionModule(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.convblk = ConvBNReLU(in_channels, out_channels, 1, 1, 0)
        self.conv1 = nn.Conv2d(out_channels, out_channels // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels // 4, out_channels, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))
        return feat * atten + feat


class BiSeNetOutput(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, mid_channels)
        self.conv_out = nn.Conv2d(mid_channels, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """forward: RGB [0,1] Bx3xHxW -> class logits [B,n_classes,H,W] (the main head; aux heads are training-only).

    The parser runs at `input_size`² (512 for the official weights) and its logits are resized back.
    """

    def __init__(self, n_classes: int = 19, input_size: int = 512, width: float = 1.0):
        super().__init__()
        widths = tuple(max(4, int(round(c * width))) for c in (64, 128, 256, 512))
        head = max(4, int(round(128 * width)))
        self.input_size = input_size
        self.cp = ContextPath(widths, head)
        fused = widths[1] + head
        self.ffm = FeatureFusionModule(fused, fused)
        self.conv_out = BiSeNetOutput(fused, fused, n_classes)
        self.conv_out16 = BiSeNetOutput(head, max(4, int(round(64 * width))), n_classes)
        self.conv_out32 = BiSeNetOutput(head, max(4, int(round(64 * width))), n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = images.shape[-2:]
        logits = self.stride8_logits(imagenet_normalize(resize_to(images, self.input_size)))
        # Upstream upsamples the stride-8 logits to the parser's input with align_corners=True; we go
        # straight to the caller's size (the same op when the caller's size is input_size).
        return F.interpolate(logits, size, mode="bilinear", align_corners=True)

    def stride8_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The network alone, on an input already resized and normalised: logits at 1/8 of its size."""
        feat8, context8, _ = self.cp(x)
        return self.conv_out(self.ffm(feat8, context8))
