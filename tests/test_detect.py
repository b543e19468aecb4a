from pathlib import Path

import numpy as np
import pytest

from facekit.align import ARCFACE_TEMPLATE_112, estimate_transform, transform_points
from facekit.detect import DlibDetector, InsightFaceDetector, landmarks68_to_5, make_detector
from facekit.errors import UserError
from facekit.imageio import read_image

insightface = pytest.importorskip("insightface")
SAMPLES = Path(insightface.__file__).parent / "data" / "images"


@pytest.fixture(scope="module")
def detector():
    return DlibDetector()


def _plausible(face) -> bool:
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks5
    x0, y0, x1, y1 = face.bbox
    inside = all(x0 - 10 <= x <= x1 + 10 and y0 - 10 <= y <= y1 + 10 for x, y in face.landmarks5)
    return inside and lx < rx and mlx < mrx and max(ly, ry) < ny < min(mly, mry)


def test_offline_detector_finds_every_face_in_the_group_photo(detector):
    faces = detector.detect(read_image(SAMPLES / "t1.jpg"))
    assert len(faces) == 6
    assert all(_plausible(f) for f in faces)
    areas = [(f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]) for f in faces]
    assert areas == sorted(areas, reverse=True)
    assert faces[0].landmarks68.shape == (68, 2)


def test_aligned_112_crop_lands_its_landmarks_on_the_template(detector):
    image = read_image(SAMPLES / "Tom_Hanks_54745.png")  # an ArcFace-aligned 112² face
    face, = detector.detect(image)
    assert _plausible(face)
    residual = transform_points(face.landmarks5, estimate_transform(face.landmarks5, 112)) - ARCFACE_TEMPLATE_112
    assert np.abs(residual[[0, 1, 3, 4]]).max() < 5  # eyes and mouth corners
    assert np.abs(residual[2]).max() < 10  # the nose tip moves with head yaw (this face is turned)


def test_blank_image_has_no_face(detector):
    assert detector.detect(np.full((120, 160, 3), 128, np.uint8)) == []


def test_insightface_without_a_model_pack_says_what_is_needed(tmp_path):
    with pytest.raises(UserError, match=r"buffalo_l.*det_10g\.onnx.*nothing is downloaded"):
        make_detector(tmp_path)
    (tmp_path / "buffalo_l").mkdir()
    (tmp_path / "buffalo_l" / "det_10g.onnx").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a usable insightface detector"):
        InsightFaceDetector(tmp_path)


def test_68_to_5_uses_eye_centres_nose_tip_and_mouth_corners():
    points = np.zeros((68, 2), np.float32)
    points[36:42], points[42:48], points[30], points[48], points[54] = (1, 1), (5, 1), (3, 3), (2, 5), (4, 5)
    assert landmarks68_to_5(points).tolist() == [[1, 1], [5, 1], [3, 3], [2, 5], [4, 5]]
