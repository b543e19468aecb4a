"""Swap quality against a known answer: one function, `swap_metrics`, shared by teacher, distill and bench
so every stage reports the same numbers.

What each number means:
- l1_face / psnr_face: error vs the ground-truth swap inside `face_mask` (the region the swap must change);
  l1_face_lowpass: l1_face after a 5x5 box blur of swap and truth: the part of the error that is tone and
  outline rather than texture or leftover noise (a blur cannot remove a wrong skin colour);
  face_brightness_error / face_chroma_error: the face's mean colour vs the truth's, split into brightness (the
  mean of R, G and B) and chroma (each channel's offset from that mean, |difference| averaged over channels):
  which part of a wrong tone a swap gets wrong;
  l1_outside / psnr_outside: the same outside it. ssim: whole-image SSIM vs the truth (11x11 Gaussian).
- background_l1 / background_psnr: swap vs the *target* outside `face_mask` (is the target kept?).
- id_sim_source / id_sim_target: cosine of the swap's embedding with the source's / target's (needs an
  embedder); id_sim_truth_source: the same for the ground truth, the ceiling a perfect swap reaches.
- Attribute errors, measured by the experts on the swap and on the target, so they need no ground truth:
  geometry_error: mean distance (fraction of image width) between parser-class centroids (both eyes, both
  brows, nose, mouth+lips) of swap and target: head pose, offset, scale and brow/mouth placement;
  expression_error: |difference| in the fraction of the face that is open mouth (class 11) and the
  brow-to-eye distance (fraction of image width): mouth opening and brow raise;
  gaze_error_deg: angle between the gaze expert's (pitch, yaw) on the swap and on the target, eye crops
  from the target's 5 landmarks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Parser classes whose centroids describe where the face is and how it is posed.
GEOMETRY_PARTS: dict[str, tuple[int, ...]] = {
    "l_eye": (4,), "r_eye": (5,), "l_brow": (2,), "r_brow": (3,), "nose": (10,), "mouth": (11, 12, 13),
}
FACE_CLASSES = (1, 2, 3, 4, 5, 10, 11, 12, 13)


def masked_mean_colour(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image mean RGB over mask pixels ([B,3,H,W], mask [B,H,W]) -> [B,3]; NaN where the mask is empty."""
    weight = mask[:, None].to(x.dtype)
    return (x * weight).sum((2, 3)) / weight.sum((2, 3))


def masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image mean |a - b| over mask pixels ([B,3,H,W], mask [B,H,W]); NaN where the mask is empty."""
    return masked_mean_colour((a - b).abs(), mask).mean(1)


def tone_errors(swap: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (brightness error, chroma error) of the mean colour over mask pixels: see the module docstring."""
    a, b = masked_mean_colour(swap, mask), masked_mean_colour(truth, mask)
    brightness_a, brightness_b = a.mean(1, keepdim=True), b.mean(1, keepdim=True)
    chroma = ((a - brightness_a) - (b - brightness_b)).abs().mean(1)
    return (brightness_a - brightness_b).abs()[:, 0], chroma


def box_blur(x: torch.Tensor, size: int = 5) -> torch.Tensor:
    """Mean over a size x size window, averaging only the pixels inside the image at the borders."""
    return F.avg_pool2d(x, size, stride=1, padding=size // 2, count_include_pad=False)


def masked_psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Per-image PSNR (dB) over mask pixels, capped at 100 dB for identical images."""
    mse = masked_mean_colour((a - b) ** 2, mask).mean(1)
    return (10 * torch.log10(peak**2 / mse.clamp_min(1e-10))).clamp(max=100.0)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004, Gaussian window, [0,1] images), averaged over channels."""
    coords = torch.arange(window, dtype=a.dtype, device=a.device) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(a.shape[1], 1, window, window)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=a.shape[1])

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    score = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return score.mean((1, 2, 3))


def gaze_vector(pitch_yaw: torch.Tensor) -> torch.Tensor:
    """[B,2] (pitch, yaw) radians -> [B,3] unit gaze direction (GazeML convention)."""
    pitch, yaw = pitch_yaw[:, 0], pitch_yaw[:, 1]
    return torch.stack([-torch.cos(pitch) * torch.sin(yaw), -torch.sin(pitch), -torch.cos(pitch) * torch.cos(yaw)], 1)


def angular_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample angle in degrees between two [B,2] (pitch, yaw) gaze predictions."""
    cos = (gaze_vector(a) * gaze_vector(b)).sum(1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))


def part_centroids(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B,H,W] labels -> centroids [B,P,2] (x, y as fractions of the width) of GEOMETRY_PARTS and
    presence [B,P] (the part has any pixel)."""
    _, h, w = labels.shape
    ys = (torch.arange(h, dtype=torch.float32, device=labels.device) + 0.5) / w
    xs = (torch.arange(w, dtype=torch.float32, device=labels.device) + 0.5) / w
    centroids, present = [], []
    for classes in GEOMETRY_PARTS.values():
        mask = _in_classes(labels, classes).float()
        area = mask.sum((1, 2))
        cx = (mask * xs[None, None, :]).sum((1, 2)) / area.clamp_min(1.0)
        cy = (mask * ys[None, :, None]).sum((1, 2)) / area.clamp_min(1.0)
        centroids.append(torch.stack([cx, cy], -1))
        present.append(area > 0)
    return torch.stack(centroids, 1), torch.stack(present, 1)


def expression_features(labels: torch.Tensor) -> torch.Tensor:
    """[B,2]: open-mouth fraction of the face, and mean brow-to-eye vertical distance (fraction of width)."""
    face = _in_classes(labels, FACE_CLASSES).float().sum((1, 2)).clamp_min(1.0)
    mouth_open = (labels == 11).float().sum((1, 2)) / face
    centroids, _ = part_centroids(labels)
    names = list(GEOMETRY_PARTS)
    brow_gap = 0.5 * (
        centroids[:, names.index("l_eye"), 1] - centroids[:, names.index("l_brow"), 1]
        + centroids[:, names.index("r_eye"), 1] - centroids[:, names.index("r_brow"), 1]
    )
    return torch.stack([mouth_open, brow_gap], 1)


def _in_classes(labels: torch.Tensor, classes: tuple[int, ...]) -> torch.Tensor:
    mask = torch.zeros_like(labels, dtype=torch.bool)
    for c in classes:
        mask |= labels == c
    return mask


def _mean(values: torch.Tensor) -> float:
    """Mean over samples where the value is defined (a NaN means an empty mask)."""
    values = values[~torch.isnan(values)]
    return float(values.mean()) if values.numel() else math.nan


@torch.no_grad()
def swap_metrics(
    swap: torch.Tensor,
    truth: torch.Tensor,
    source: torch.Tensor,
    target: torch.Tensor,
    face_mask: torch.Tensor,
    embedder: nn.Module | None = None,
    parser: nn.Module | None = None,
    gaze: nn.Module | None = None,
    target_landmarks: torch.Tensor | None = None,
) -> dict[str, float]:
    """Mean metrics over a batch. Images [B,3,H,W] in [0,1]; face_mask [B,H,W] bool: the pixels a swap
    may change (e.g. the truth's face mask or'ed with the target's). Expert-based metrics appear only when
    the expert is given: embedder -> id_sim_*, parser -> geometry/expression errors, gaze (an EyeNet, with
    target_landmarks [B,5,2] pixels) -> gaze_error_deg."""
    if not (swap.shape == truth.shape == source.shape == target.shape) or swap.dim() != 4:
        raise ValueError(f"swap_metrics: images must share one [B,3,H,W] shape, got {list(swap.shape)}, "
                         f"{list(truth.shape)}, {list(source.shape)}, {list(target.shape)}")
    if face_mask.shape != (swap.shape[0], *swap.shape[2:]):
        raise ValueError(f"swap_metrics: face_mask must be [B,H,W] = {[swap.shape[0], *swap.shape[2:]]}, "
                         f"got {list(face_mask.shape)}")
    swap, truth, source, target = (x.float().clamp(0.0, 1.0) for x in (swap, truth, source, target))
    face_mask = face_mask.bool()
    outside = ~face_mask
    brightness, chroma = tone_errors(swap, truth, face_mask)
    result = {
        "l1_face": _mean(masked_l1(swap, truth, face_mask)),
        "l1_face_lowpass": _mean(masked_l1(box_blur(swap), box_blur(truth), face_mask)),
        "face_brightness_error": _mean(brightness),
        "face_chroma_error": _mean(chroma),
        "l1_outside": _mean(masked_l1(swap, truth, outside)),
        "psnr_face": _mean(masked_psnr(swap, truth, face_mask)),
        "psnr_outside": _mean(masked_psnr(swap, truth, outside)),
        "ssim": _mean(ssim(swap, truth)),
        "background_l1": _mean(masked_l1(swap, target, outside)),
        "background_psnr": _mean(masked_psnr(swap, target, outside)),
    }
    if embedder is not None:
        z_swap, z_truth, z_source, z_target = (embedder(x)[0] for x in (swap, truth, source, target))
        result["id_sim_source"] = _mean(F.cosine_similarity(z_swap, z_source))
        result["id_sim_target"] = _mean(F.cosine_similarity(z_swap, z_target))
        result["id_sim_truth_source"] = _mean(F.cosine_similarity(z_truth, z_source))
    if parser is not None:
        labels_swap, labels_target = parser(swap).argmax(1), parser(target).argmax(1)
        c_swap, p_swap = part_centroids(labels_swap)
        c_target, p_target = part_centroids(labels_target)
        both = p_swap & p_target
        distance = (c_swap - c_target).norm(dim=-1)
        per_image = (distance * both).sum(1) / both.sum(1).clamp_min(1)
        # A part the target has but the swap lost counts as the worst case: a full image width away.
        per_image = per_image + (p_target & ~p_swap).float().mean(1)
        result["geometry_error"] = _mean(per_image)
        result["expression_error"] = _mean(
            (expression_features(labels_swap) - expression_features(labels_target)).abs().sum(1)
        )
    if gaze is not None:
        if target_landmarks is None:
            raise ValueError("swap_metrics: gaze error needs target_landmarks [B,5,2] for the eye crops")
        from facekit.experts.eyenet import crop_eyes

        b = swap.shape[0]
        _, g_swap = gaze(crop_eyes(swap, target_landmarks))
        _, g_target = gaze(crop_eyes(target, target_landmarks))
        result["gaze_error_deg"] = _mean(angular_error(g_swap, g_target).view(2, b).mean(0))
    return result


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per named result (e.g. per model), one column per metric."""
    columns = sorted({key for row in rows.values() for key in row}, key=_column_order)
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


_ORDER = ("l1_face", "l1_face_lowpass", "face_brightness_error", "face_chroma_error", "psnr_face", "l1_outside",
          "psnr_outside", "ssim", "background_l1", "background_psnr",
          "id_sim_source", "id_sim_target", "id_sim_truth_source", "geometry_error", "expression_error",
          "gaze_error_deg")


def _column_order(name: str) -> tuple[int, str]:
    return (_ORDER.index(name) if name in _ORDER else len(_ORDER), name)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"
