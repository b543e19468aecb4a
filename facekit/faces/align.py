"""Face alignment to the ArcFace 5-point template, and pasting a swapped crop back into its frame.

The crop conventions of the pipeline: 112² for ArcFace, 224² = template×2 for the MobileFaceSwap student
(fitted there with a full affine; insightface's `norm_crop` uses a similarity), and 256² FFHQ-style for the
DiffFace teacher. Transforms are 2x3 matrices mapping frame pixels to crop pixels (cv2 convention).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from facekit.errors import UserError

ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def _ffhq_frame(template: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and side of FFHQ's crop quad for a frontal face with these 5 points (FFHQ's alignment rule:
    centre = eye midpoint + 0.1·eye-to-mouth, side = 2·max(2·eye distance, 1.8·eye-to-mouth))."""
    eye_avg = template[:2].mean(0)
    eye_to_eye = template[1] - template[0]
    eye_to_mouth = template[3:].mean(0) - eye_avg
    half = max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    return eye_avg + 0.1 * eye_to_mouth, 2.0 * half


def template_points(size: int, style: str = "arcface") -> np.ndarray:
    """The 5 target points in a `size`² crop: "arcface" scales the 112 template (224 = ×2, MobileFaceSwap);
    "ffhq" places the same face the way FFHQ crops it (looser, centred lower: the teacher's 256² data)."""
    if style == "arcface":
        return ARCFACE_TEMPLATE_112 * (size / 112.0)
    if style == "ffhq":
        centre, side = _ffhq_frame(ARCFACE_TEMPLATE_112)
        return (ARCFACE_TEMPLATE_112 - centre) * (size / side) + size / 2.0
    raise ValueError(f"unknown alignment style {style!r} (arcface or ffhq)")


def _umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation taking src onto dst (Umeyama 1991)."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    rotation = u @ d @ vt
    scale = np.trace(np.diag(s) @ d) / src_c.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def estimate_transform(landmarks5: np.ndarray, size: int, mode: str = "similarity", style: str = "arcface") -> np.ndarray:
    """2x3 matrix mapping the frame onto a `size`² aligned crop (mode: "similarity" or "affine")."""
    src = np.asarray(landmarks5, dtype=np.float64).reshape(-1, 2)
    if src.shape != (5, 2) or not np.isfinite(src).all():
        raise UserError(f"alignment needs 5 finite (x, y) landmarks, got shape {np.asarray(landmarks5).shape}")
    dst = template_points(size, style)
    if mode == "similarity":
        return _umeyama_similarity(src, dst)
    if mode == "affine":
        design = np.hstack([src, np.ones((5, 1))])
        solution, *_ = np.linalg.lstsq(design, dst, rcond=None)
        return solution.T
    raise ValueError(f"unknown transform mode {mode!r} (similarity or affine)")


def warp_face(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The aligned `size`² crop (same dtype as `image`); outside the frame is black, as insightface does."""
    return cv2.warpAffine(image, np.asarray(matrix, dtype=np.float64), (size, size), flags=cv2.INTER_LINEAR, borderValue=0)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def soft_paste_mask(mask: np.ndarray, erode: int = 10, blur: int = 10, border_fade: int = 10) -> np.ndarray:
    """Crop-space alpha in [0,1]: the fusion mask shrunk by `erode` px (grown when negative), feathered by a
    `blur` px Gaussian, and faded to 0 over `border_fade` px at the crop border so no crop edge shows."""
    alpha = np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)
    if erode:
        kernel = np.ones((2 * abs(erode) + 1, 2 * abs(erode) + 1), np.uint8)
        alpha = cv2.erode(alpha, kernel) if erode > 0 else cv2.dilate(alpha, kernel)
    if blur > 0:
        alpha = cv2.GaussianBlur(alpha, (2 * blur + 1, 2 * blur + 1), 0)
    if border_fade > 0:
        h, w = alpha.shape
        ramp_y = np.clip(np.minimum(np.arange(h), np.arange(h)[::-1]) / border_fade, 0, 1)
        ramp_x = np.clip(np.minimum(np.arange(w), np.arange(w)[::-1]) / border_fade, 0, 1)
        alpha = alpha * np.minimum(ramp_y[:, None], ramp_x[None, :]).astype(np.float32)
    return alpha


def paste_back(
    frame: np.ndarray,
    face: np.ndarray,
    matrix: np.ndarray,
    mask: np.ndarray | None = None,
    erode: int = 10,
    blur: int = 10,
    border_fade: int = 10,
) -> np.ndarray:
    """Blend an aligned (swapped) crop back into `frame` (uint8 HxWx3) through the inverse warp.

    Only the frame region the crop lands on is warped and blended (a face is a few percent of a video frame).
    Blending happens in float and is rounded once, so untouched pixels keep their exact value (mask 0 ->
    frame bytes unchanged) and no colour is clipped or shifted. Returns a new array.
    """
    frame = np.asarray(frame)
    size_h, size_w = face.shape[:2]
    if mask is None:
        mask = np.ones((size_h, size_w), np.float32)
    alpha_crop = soft_paste_mask(mask.reshape(size_h, size_w), erode, blur, border_fade)
    inverse = cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))
    region = _landing_region(inverse, size_w, size_h, frame.shape[1], frame.shape[0])
    out = frame.copy()
    if region is None:
        return out
    x0, y0, x1, y1 = region
    shifted = inverse.copy()
    shifted[:, 2] -= (x0, y0)  # warp straight into the region
    warped = cv2.warpAffine(face.astype(np.float32), shifted, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderValue=0)
    alpha = cv2.warpAffine(alpha_crop, shifted, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderValue=0)[..., None]
    blended = out[y0:y1, x0:x1].astype(np.float32) * (1.0 - alpha) + warped * alpha
    out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(frame.dtype)
    return out


def _landing_region(inverse: np.ndarray, crop_w: int, crop_h: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Pixel box (x0, y0, x1, y1) of the frame that a crop warped by `inverse` covers, one pixel of margin for
    bilinear taps; None when it lies outside the frame."""
    corners = np.array([[0, 0, 1], [crop_w, 0, 1], [0, crop_h, 1], [crop_w, crop_h, 1]], dtype=np.float64) @ inverse.T
    x0, y0 = np.floor(corners.min(0)).astype(int) - 1
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    return (int(x0), int(y0), int(x1), int(y1)) if x1 > x0 and y1 > y0 else None


def align_faces(
    image: np.ndarray,
    faces: Sequence,
    size: int,
    mode: str = "similarity",
    style: str = "arcface",
    index: int | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(crop, matrix) for every detected face, or only `faces[index]`; faces need `.landmarks5`."""
    if not faces:
        raise UserError("no face found in the image")
    chosen = list(faces)
    if index is not None:
        if not -len(chosen) <= index < len(chosen):
            raise UserError(f"face index {index} asked for, but the image has {len(chosen)} face(s)")
        chosen = [chosen[index]]
    out = []
    for face in chosen:
        matrix = estimate_transform(face.landmarks5, size, mode, style)
        out.append((warp_face(image, matrix, size), matrix))
    return out


def crop_to_crop_transform(src_size: int, src_style: str, dst_size: int, dst_style: str) -> np.ndarray:
    """2x3 matrix taking an aligned crop of one convention to another (e.g. the teacher's FFHQ-style 256²
    to ArcFace's 112²), so an expert sees the framing it was trained on."""
    src = template_points(src_size, src_style)
    return _umeyama_similarity(src, template_points(dst_size, dst_style))


def warp_tensor(images: torch.Tensor, matrix: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable `warp_face` for a batch [B,C,H,W] (one 2x3 pixel matrix for all, or [B,2,3]);
    bilinear, zeros outside, the same pixel-centre convention as cv2.warpAffine."""
    b, _, h, w = images.shape
    m = torch.as_tensor(np.asarray(matrix) if not torch.is_tensor(matrix) else matrix, dtype=images.dtype, device=images.device)
    m = m.expand(b, 2, 3) if m.dim() == 2 else m
    square = torch.cat([m, m.new_tensor([0.0, 0.0, 1.0]).expand(b, 1, 3)], dim=1)
    inverse = torch.linalg.inv(square)[:, :2]  # crop pixel -> frame pixel
    coords = torch.arange(size, dtype=images.dtype, device=images.device)
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    crop_pixels = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(1, -1, 3)
    frame_pixels = crop_pixels @ inverse.transpose(1, 2)  # [B, size*size, 2]
    scale = images.new_tensor([w, h])
    grid = ((2 * frame_pixels + 1) / scale - 1).reshape(b, size, size, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
