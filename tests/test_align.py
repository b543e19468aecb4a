from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from facekit.faces.align import (
    ARCFACE_TEMPLATE_112, align_faces, estimate_transform, paste_back, soft_paste_mask, template_points,
    crop_to_crop_transform, transform_points, warp_face, warp_tensor,
)
from facekit.errors import UserError


def _rotated_landmarks(angle_deg: float, scale: float, shift) -> tuple[np.ndarray, np.ndarray]:
    """Template points placed into a frame by a known similarity; returns (points, frame->crop matrix)."""
    theta = np.deg2rad(angle_deg)
    rot = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    points = ARCFACE_TEMPLATE_112 @ rot.T + np.asarray(shift)
    to_frame = np.hstack([rot, np.asarray(shift, float)[:, None]])
    return points, cv2.invertAffineTransform(to_frame)


@pytest.mark.parametrize("mode", ["similarity", "affine"])
def test_transform_recovers_a_known_pose(mode):
    points, expected = _rotated_landmarks(17.0, 2.5, (300.0, 120.0))
    matrix = estimate_transform(points, 112, mode)
    assert np.allclose(matrix, expected, atol=1e-6)
    assert np.allclose(transform_points(points, matrix), ARCFACE_TEMPLATE_112, atol=1e-6)


def test_224_is_template_times_two_and_ffhq_is_looser_and_centred():
    assert np.allclose(template_points(224), ARCFACE_TEMPLATE_112 * 2)
    ffhq = template_points(256, "ffhq")
    eye_distance_ffhq = ffhq[1, 0] - ffhq[0, 0]
    eye_distance_arcface = template_points(256)[1, 0] - template_points(256)[0, 0]
    assert eye_distance_ffhq < eye_distance_arcface  # more context around the face
    assert abs(ffhq[:, 0].mean() - 128) < 2 and 90 < ffhq[:2, 1].mean() < 128


def test_warp_then_paste_back_restores_the_face_and_leaves_the_rest_untouched():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    frame = cv2.GaussianBlur(frame, (0, 0), 3)  # smooth content, so resampling error stays small
    points, _ = _rotated_landmarks(-8.0, 1.4, (110.0, 40.0))
    matrix = estimate_transform(points, 224)
    crop = warp_face(frame, matrix, 224)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    swapped = np.full_like(crop, 200)
    mask = np.zeros((224, 224), np.float32)
    mask[60:170, 60:170] = 1.0
    out = paste_back(frame, swapped, matrix, mask, erode=4, blur=4, border_fade=10)
    centre = transform_points(np.array([[112.0, 112.0]]), cv2.invertAffineTransform(matrix))[0].round().astype(int)
    assert np.all(out[centre[1], centre[0]] == 200)
    far = np.ones(frame.shape[:2], bool)
    far[:200, 60:250] = False
    assert np.array_equal(out[far], frame[far])  # outside the pasted region: byte-identical
    restored = paste_back(frame, crop, matrix, np.ones((224, 224), np.float32), erode=0, blur=0, border_fade=0)
    inside = transform_points(template_points(224), cv2.invertAffineTransform(matrix)).round().astype(int)
    assert np.abs(restored[inside[:, 1], inside[:, 0]].astype(int) - frame[inside[:, 1], inside[:, 0]]).max() <= 3


@pytest.mark.parametrize("shift", [(500.0, 300.0), (-60.0, 500.0), (5000.0, 5000.0)])
def test_pasting_only_the_face_region_equals_blending_the_whole_frame(shift):
    """Video pastes warp just the region a face lands on; the frame must come out as a full-frame blend would
    give it, also for a face partly or wholly outside the frame."""
    rng = np.random.default_rng(1)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8), (0, 0), 2)
    points, _ = _rotated_landmarks(11.0, 2.2, shift)
    matrix = estimate_transform(points, 224)
    face = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    mask = np.zeros((224, 224), np.float32)
    mask[40:190, 50:180] = 1.0
    out = paste_back(frame, face, matrix, mask)
    inverse = cv2.invertAffineTransform(matrix)
    warped = cv2.warpAffine(face.astype(np.float32), inverse, (1280, 720), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(soft_paste_mask(mask), inverse, (1280, 720), flags=cv2.INTER_LINEAR)[..., None]
    whole = np.clip(np.rint(frame * (1.0 - alpha) + warped * alpha), 0, 255).astype(np.uint8)
    assert np.abs(out.astype(int) - whole).max() <= 1
    assert np.array_equal(out[alpha[..., 0] == 0], frame[alpha[..., 0] == 0])


def test_soft_mask_fades_to_zero_at_the_crop_border():
    alpha = soft_paste_mask(np.ones((64, 64)), erode=0, blur=0, border_fade=10)
    assert alpha[0].max() == 0 and alpha[:, -1].max() == 0 and alpha[32, 32] == 1
    assert 0 < alpha[32, 5] < 1
    square = np.zeros((64, 64), np.float32)
    square[24:40, 24:40] = 1
    shrunk = soft_paste_mask(square, erode=3, blur=0, border_fade=0)
    grown = soft_paste_mask(square, erode=-3, blur=0, border_fade=0)
    assert shrunk.sum() == 10 * 10 and grown.sum() == 22 * 22


def test_multi_face_selection_and_errors():
    frame = np.zeros((200, 400, 3), np.uint8)
    faces = [SimpleNamespace(landmarks5=_rotated_landmarks(0, 1.0, (x, 40.0))[0]) for x in (10.0, 250.0)]
    assert len(align_faces(frame, faces, 112)) == 2
    (crop, matrix), = align_faces(frame, faces, 112, index=1)
    assert np.allclose(transform_points(faces[1].landmarks5, matrix), ARCFACE_TEMPLATE_112, atol=1e-6)
    with pytest.raises(UserError, match="index 2"):
        align_faces(frame, faces, 112, index=2)
    with pytest.raises(UserError, match="no face"):
        align_faces(frame, [], 112)
    with pytest.raises(UserError, match="5 finite"):
        estimate_transform(np.zeros((4, 2)), 112)


def test_warp_tensor_matches_cv2_and_is_differentiable():
    import torch

    rng = np.random.default_rng(1)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), (0, 0), 2)
    points, _ = _rotated_landmarks(12.0, 0.6, (20.0, 10.0))
    matrix = estimate_transform(points, 64)
    expected = warp_face(frame.astype(np.float32), matrix, 64)
    images = torch.from_numpy(frame).permute(2, 0, 1)[None].float().requires_grad_(True)
    warped = warp_tensor(images, matrix, 64)
    got = warped[0].permute(1, 2, 0).detach().numpy()
    assert np.abs(got - expected)[2:-2, 2:-2].max() < 1.0  # interior: same sampling, up to rounding
    warped.mean().backward()
    assert images.grad.abs().sum() > 0


def test_ffhq_crop_maps_onto_the_arcface_crop():
    matrix = crop_to_crop_transform(256, "ffhq", 112, "arcface")
    assert np.allclose(transform_points(template_points(256, "ffhq"), matrix), ARCFACE_TEMPLATE_112, atol=1e-6)
