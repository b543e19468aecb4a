"""DiffFace's guidance energies, per sample so that a batch of pairs gets independent gradients.

Every energy takes the guidance input x_in in diffusion space [-1,1] and returns a loss of shape [B]; the
sampler sums them with their weights and differentiates once through the single UNet forward. How images
reach each expert (resize, normalisation, masking, eye crops) is set by the sampling config, so the
`official` preset can feed the experts exactly as the original code does and the others as we believe is
right (teacher/sampling.py, `SwapConfig`).
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from facekit.experts.arcface import imagenet_normalize, resize_to
from facekit.experts.bisenet import KEPT_CLASSES
from facekit.experts.eyenet import EYE_HEIGHT, EYE_WIDTH, crop_eyes, eye_boxes

from .experts import Experts, to_unit

# The original's extending augmentation (kornia), applied with probability 0.7 to every view but the first.
AUG_DEGREES, AUG_TRANSLATE, AUG_PERSPECTIVE, AUG_P = 15.0, 0.1, 0.7, 0.7


class Preprocessing(Protocol):
    """The SwapConfig fields the guidance reads."""

    embedder_resize: str
    embedder_mask: bool
    parser_normalization: str
    parser_resize: str
    sem_reduction: str
    gaze_crop: str
    views: int


def embedder_input(experts: Experts, images: torch.Tensor, config: Preprocessing,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Diffusion-space images → the embedder's normalised input at its size. ImageNet normalisation first
    (it commutes with resizing), then the optional face mask (the original multiplies the normalised image
    by the target's mask), then nearest (original) or antialiased bilinear resizing."""
    x = imagenet_normalize(to_unit(images))
    if mask is not None:
        x = x * mask
    size = experts.embedder.input_size
    if config.embedder_resize == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")
    return resize_to(x, size)


def source_embedding(experts: Experts, source: torch.Tensor, config: Preprocessing) -> torch.Tensor:
    """The UNet's identity condition and the identity guidance's reference, one computation for both."""
    return experts.embedder.features(embedder_input(experts, source, config))[0]


def identity_views(x: torch.Tensor, views: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """DiffFace's extending augmentation with kornia, as the original: the clean batch, then (views−1) copies
    through RandomAffine(15°, translate 0.1) + RandomPerspective(0.7), each with p = 0.7. Returns
    [views·B, ...], view-major. kornia draws from the global RNG: a seed from `generator` makes it repeatable."""
    if views <= 1:
        return x
    import kornia.augmentation as K

    augment = torch.nn.Sequential(
        K.RandomAffine(degrees=AUG_DEGREES, translate=AUG_TRANSLATE, p=AUG_P, padding_mode="border"),
        K.RandomPerspective(AUG_PERSPECTIVE, p=AUG_P))
    seed = int(torch.randint(2**62, (1,), generator=generator)) if generator is not None else None
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        if seed is not None:
            torch.manual_seed(seed)
        augmented = augment(x.repeat(views - 1, 1, 1, 1))
    return torch.cat([x, augmented], dim=0)


def identity_loss(experts: Experts, x_in: torch.Tensor, reference: torch.Tensor, config: Preprocessing,
                  mask: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """1 − cos(reference embedding, D_I(view of x_in)), averaged over the views."""
    b = x_in.shape[0]
    x = embedder_input(experts, x_in, config, mask if config.embedder_mask else None)
    embeddings = experts.embedder.features(identity_views(x, config.views, generator))[0]
    cos = (embeddings.reshape(-1, b, embeddings.shape[-1]) * reference[None]).sum(-1)
    return (1 - cos).mean(dim=0)


def parser_logits(experts: Experts, images: torch.Tensor, config: Preprocessing) -> torch.Tensor:
    """Class logits of diffusion-space images, at their size.

    official resizing: plain bilinear to the parser's input, logits upsampled to that input, then resized
    (plain bilinear) to the image size, as the original; antialias: antialiased input resize, stride-8 logits
    straight to the image size. "double" normalisation applies (x − 0.5)/0.5 after ImageNet's, the original's
    bug (its official weights were sampled with it)."""
    parser = experts.require_parser()
    size = tuple(images.shape[-2:])
    unit = to_unit(images)
    if config.parser_resize == "official":
        x = F.interpolate(unit, size=(parser.input_size,) * 2, mode="bilinear", align_corners=False)
    else:
        x = resize_to(unit, parser.input_size)
    x = imagenet_normalize(x)
    if config.parser_normalization == "double":
        x = (x - 0.5) / 0.5
    logits = parser.stride8_logits(x)
    if config.parser_resize == "official":
        logits = F.interpolate(logits, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=True)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def semantic_loss(experts: Experts, x_in: torch.Tensor, target_logits: torch.Tensor,
                  config: Preprocessing) -> torch.Tensor:
    """L1 between the parser logits of x_in and of the target on the kept (inner-face) classes: per class the
    mean over pixels, then summed over the classes (original) or averaged."""
    kept = list(KEPT_CLASSES)
    per_class = (parser_logits(experts, x_in, config)[:, kept] - target_logits[:, kept]).abs().mean(dim=(2, 3))
    return per_class.sum(dim=1) if config.sem_reduction == "sum" else per_class.mean(dim=1)


def eye_gazes(experts: Experts, images: torch.Tensor, landmarks: torch.Tensor, crop: str) -> torch.Tensor:
    """(pitch, yaw) of each eye [B, 2 eyes, 2] of diffusion-space images, eyes where `landmarks` put them.

    subpixel: the box sampled bilinearly onto the 96×160 grid (differentiable in the box). integer: the
    original's crop, the box floored to whole pixels, sliced, its channel mean resized to 96×160."""
    eyenet = experts.require_gaze()
    unit = to_unit(images)
    b, _, h, w = unit.shape
    if crop == "subpixel":
        crops = crop_eyes(unit, landmarks)  # all left eyes, then all right eyes
        return eyenet(crops)[1].reshape(2, b, 2).transpose(0, 1)
    boxes = eye_boxes(landmarks.to(unit.dtype), (h, w)).floor().long()
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, w)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, h)
    crops = []
    for i in range(b):
        for x0, y0, x1, y1 in boxes[i].tolist():
            eye = unit[i:i + 1, :, y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)].mean(dim=1, keepdim=True)
            crops.append(F.interpolate(eye, size=(EYE_HEIGHT, EYE_WIDTH), mode="bilinear", align_corners=False))
    return eyenet(torch.cat(crops))[1].reshape(b, 2, 2)


def gaze_loss(experts: Experts, x_in: torch.Tensor, landmarks: torch.Tensor, target_gaze: torch.Tensor,
              config: Preprocessing) -> torch.Tensor:
    """The original's sum over the eyes of the L1 between the gaze of x_in and of the target (per eye, so that
    opposite errors of the two eyes do not cancel)."""
    gaze = eye_gazes(experts, x_in, landmarks, config.gaze_crop)
    return (gaze - target_gaze).abs().mean(dim=2).sum(dim=1)


def target_mse(x_in: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The official code's undocumented whole-image MSE to the target (weight 50 in its defaults)."""
    return ((x_in - target) ** 2).mean(dim=(1, 2, 3))
