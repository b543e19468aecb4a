"""DiffFace's guidance energies, per sample so that a batch of pairs gets independent gradients.

Every function takes the guidance input x_in in diffusion space [-1,1] and returns a loss of shape [B];
the sampler sums them with their weights and differentiates once through the single UNet forward.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from facekit.bisenet import KEPT_CLASSES

from .experts import Experts


def random_views(images: torch.Tensor, views: int, generator: torch.Generator | None = None,
                 max_rotate: float = 10.0, max_scale: float = 0.1, max_shift: float = 0.06,
                 max_perspective: float = 0.08, size: int = 112) -> torch.Tensor:
    """DiffFace's "extending augmentation": 1 clean view + (views−1) random affine/perspective warps, at
    `size`² (the embedder's input). Differentiable (grid_sample). Returns [views*B, 3, size, size], view-major."""
    b = images.shape[0]
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    if views <= 1:
        return images
    n = (views - 1) * b

    def uniform(scale: float, *shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=generator) * 2 - 1).to(images) * scale

    angle = uniform(math.radians(max_rotate), n)
    scale = 1 + uniform(max_scale, n)
    homography = torch.zeros(n, 3, 3, dtype=images.dtype, device=images.device)
    homography[:, 0, 0] = torch.cos(angle) / scale
    homography[:, 0, 1] = -torch.sin(angle) / scale
    homography[:, 1, 0] = torch.sin(angle) / scale
    homography[:, 1, 1] = torch.cos(angle) / scale
    homography[:, :2, 2] = uniform(max_shift, n, 2)
    homography[:, 2, :2] = uniform(max_perspective, n, 2)
    homography[:, 2, 2] = 1
    lin = torch.linspace(-1, 1, size, dtype=images.dtype, device=images.device)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    grid = torch.stack([xx, yy, torch.ones_like(xx)], dim=-1).reshape(1, -1, 3)  # [1, HW, 3]
    warped = grid @ homography.transpose(1, 2)  # output pixel → input position
    warped = (warped[..., :2] / warped[..., 2:].clamp(min=1e-3)).reshape(n, size, size, 2)
    augmented = F.grid_sample(images.repeat(views - 1, 1, 1, 1), warped, mode="bilinear",
                              padding_mode="reflection", align_corners=True)
    return torch.cat([images, augmented], dim=0)


def identity_loss(experts: Experts, x_in: torch.Tensor, source_embedding: torch.Tensor, views: int = 8,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """1 − cos(D_I(source), D_I(view of x_in)), averaged over the views."""
    b = x_in.shape[0]
    embeddings = experts.identity(random_views(x_in, views, generator))
    cos = (embeddings.reshape(-1, b, embeddings.shape[-1]) * source_embedding[None]).sum(-1)
    return (1 - cos).mean(dim=0)


def semantic_loss(experts: Experts, x_in: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """L1 between the parser logits of x_in and of the target, on the kept (inner-face) classes."""
    kept = list(KEPT_CLASSES)
    logits = experts.parse(x_in)
    return (logits[:, kept] - target_logits[:, kept]).abs().mean(dim=(1, 2, 3))


def gaze_loss(experts: Experts, x_in: torch.Tensor, landmarks: torch.Tensor, target_gaze: torch.Tensor) -> torch.Tensor:
    """L1 between (pitch, yaw) of x_in and of the target, eyes cropped where the target's eyes are."""
    return (experts.gaze_of(x_in, landmarks) - target_gaze).abs().mean(dim=1)


def target_mse(x_in: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The official code's undocumented whole-image MSE to the target (weight 50 in its defaults)."""
    return ((x_in - target) ** 2).mean(dim=(1, 2, 3))
