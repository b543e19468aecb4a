"""The gaze expert D_G: EyeNet, a stacked-hourglass eye-landmark network with a gaze head (GazeML-pytorch).

Names follow DiffFace's `GazeEstimator.pt`. The network sees one grayscale eye crop of 96x160 in [0,1]
(DiffFace feeds the channel mean of the [0,1] image, resized to 96x160) and returns 34 eye landmarks from the
last hourglass' heatmaps plus (pitch, yaw).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EYE_HEIGHT, EYE_WIDTH = 96, 160
# DiffFace's eye box at 256²: landmark x-span ±5 px, eye-centre y ±9 px; scaled with the image size.
EYE_MARGIN_X, EYE_MARGIN_Y, EYE_MARGIN_REFERENCE = 5.0, 9.0, 256.0
EYE_SPAN_FROM_CENTRES = 0.46


class Conv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, bn: bool = False, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, bias=True)
        self.bn = nn.BatchNorm2d(out_channels) if bn else None
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class Residual(nn.Module):
    """Pre-activation bottleneck; `skip_layer` exists (and is stored) even when unused, as upstream."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = Conv(in_channels, mid, 1, relu=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = Conv(mid, mid, 3, relu=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = Conv(mid, out_channels, 1, relu=False)
        self.skip_layer = Conv(in_channels, out_channels, 1, relu=False)
        self.need_skip = in_channels != out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.skip_layer(x) if self.need_skip else x
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + residual


class Hourglass(nn.Module):
    def __init__(self, depth: int, channels: int):
        super().__init__()
        self.up1 = Residual(channels, channels)
        self.low1 = Residual(channels, channels)
        self.low2 = Hourglass(depth - 1, channels) if depth > 1 else Residual(channels, channels)
        self.low3 = Residual(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.low3(self.low2(self.low1(F.max_pool2d(x, 2, 2))))
        return self.up1(x) + F.interpolate(low, x.shape[2:], mode="bilinear", align_corners=False)


class Merge(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = Conv(in_channels, out_channels, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def soft_argmax2d(heatmaps: torch.Tensor, beta: float = 100.0) -> torch.Tensor:
    """Differentiable peak location [..., 2] as (row, col) in heatmap pixels — GazeML's order, which the
    gaze head was trained on."""
    *lead, h, w = heatmaps.shape
    weights = torch.softmax(beta * heatmaps.reshape(*lead, h * w), dim=-1).reshape(*lead, h, w)
    rows = torch.arange(h, dtype=weights.dtype, device=weights.device)
    cols = torch.arange(w, dtype=weights.dtype, device=weights.device)
    return torch.stack([(weights.sum(-1) * rows).sum(-1), (weights.sum(-2) * cols).sum(-1)], dim=-1)


class EyeNet(nn.Module):
    """forward: eye crops [B,1,96,160] in [0,1] -> (landmarks [B,nlandmarks,2] (row, col) at the 48x80
    heatmap scale, gaze [B,2] (pitch, yaw) in radians)."""

    def __init__(self, nstack: int = 3, nfeatures: int = 32, nlandmarks: int = 34):
        super().__init__()
        self.nstack = nstack
        self.pre = nn.Sequential(
            Conv(1, 64, 7, 1, bn=True), Residual(64, 128), nn.MaxPool2d(2, 2), Residual(128, 128), Residual(128, nfeatures)
        )
        self.pre2 = nn.Sequential(
            Conv(nfeatures, 64, 7, 2, bn=True), Residual(64, 128), nn.MaxPool2d(2, 2), Residual(128, 128), Residual(128, nfeatures)
        )
        self.hgs = nn.ModuleList([nn.Sequential(Hourglass(4, nfeatures)) for _ in range(nstack)])
        self.features = nn.ModuleList(
            [nn.Sequential(Residual(nfeatures, nfeatures), Conv(nfeatures, nfeatures, 1, bn=True)) for _ in range(nstack)]
        )
        self.outs = nn.ModuleList([Conv(nfeatures, nlandmarks, 1, relu=False) for _ in range(nstack)])
        self.merge_features = nn.ModuleList([Merge(nfeatures, nfeatures) for _ in range(nstack - 1)])
        self.merge_preds = nn.ModuleList([Merge(nlandmarks, nfeatures) for _ in range(nstack - 1)])
        gaze_inputs = nfeatures * (EYE_HEIGHT // 8) * (EYE_WIDTH // 8) + 2 * nlandmarks
        self.gaze_fc1 = nn.Linear(gaze_inputs, 256)
        self.gaze_fc2 = nn.Linear(256, 2)

    def forward(self, eye_crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if eye_crops.shape[1:] != (1, EYE_HEIGHT, EYE_WIDTH):
            raise ValueError(f"EyeNet expects [B,1,{EYE_HEIGHT},{EYE_WIDTH}] crops, got {list(eye_crops.shape)}")
        x = self.pre(eye_crops)
        gaze_features = self.pre2(x).flatten(1)
        for i in range(self.nstack):
            feature = self.features[i](self.hgs[i](x))
            heatmaps = self.outs[i](feature)
            if i < self.nstack - 1:
                x = x + self.merge_preds[i](heatmaps) + self.merge_features[i](feature)
        landmarks = soft_argmax2d(heatmaps)
        hidden = F.relu(self.gaze_fc1(torch.cat([gaze_features, landmarks.flatten(1)], dim=1)))
        return landmarks, self.gaze_fc2(hidden)


def eye_boxes(landmarks: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Eye boxes [B,2,4] (x0, y0, x1, y1), left then right eye, from 68-point or 5-point landmarks [B,N,2].

    68 points: DiffFace's rule (corners 36/39 and 42/45). 5 points: corner-to-corner width taken as
    EYE_SPAN_FROM_CENTRES × the inter-ocular distance (the typical ratio on the 68-point layout), same margins.
    """
    h, w = image_size
    scale_x, scale_y = w / EYE_MARGIN_REFERENCE, h / EYE_MARGIN_REFERENCE
    if landmarks.shape[1] == 68:
        corners = torch.stack([landmarks[:, [36, 39]], landmarks[:, [42, 45]]], dim=1)  # [B,2,2,2]
        x0, x1 = corners[..., 0, 0], corners[..., 1, 0]
        cy = corners[..., 1].mean(-1)
    elif landmarks.shape[1] == 5:
        centres = landmarks[:, :2]
        half = EYE_SPAN_FROM_CENTRES / 2 * (centres[:, 1, 0] - centres[:, 0, 0]).abs()[:, None]
        x0, x1 = centres[..., 0] - half, centres[..., 0] + half
        cy = centres[..., 1]
    else:
        raise ValueError(f"eye_boxes: expected 68 or 5 landmarks, got {landmarks.shape[1]}")
    mx, my = EYE_MARGIN_X * scale_x, EYE_MARGIN_Y * scale_y
    return torch.stack([x0 - mx, cy - my, x1 + mx, cy + my], dim=-1)


def crop_eyes(images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """Grayscale 96x160 eye crops [2B,1,96,160] (all left eyes, then all right eyes), differentiable w.r.t.
    `images` ([B,3,H,W] in [0,1]) through bilinear sampling."""
    b, _, h, w = images.shape
    boxes = eye_boxes(landmarks.to(images.dtype), (h, w)).transpose(0, 1).reshape(2 * b, 4)
    gray = images.mean(1, keepdim=True).repeat(2, 1, 1, 1)
    # Sample pixel centres of the box on a 96x160 grid (align_corners=False convention).
    ys = (torch.arange(EYE_HEIGHT, device=images.device, dtype=images.dtype) + 0.5) / EYE_HEIGHT
    xs = (torch.arange(EYE_WIDTH, device=images.device, dtype=images.dtype) + 0.5) / EYE_WIDTH
    px = boxes[:, None, None, 0] + xs[None, None, :] * (boxes[:, None, None, 2] - boxes[:, None, None, 0])
    py = boxes[:, None, None, 1] + ys[None, :, None] * (boxes[:, None, None, 3] - boxes[:, None, None, 1])
    px, py = torch.broadcast_tensors(px, py)
    grid = torch.stack([px / w * 2 - 1, py / h * 2 - 1], dim=-1)
    return F.grid_sample(gray, grid, mode="bilinear", padding_mode="border", align_corners=False)
