from pathlib import Path

import numpy as np
import pytest
import torch

from facekit.faces.align import ARCFACE_TEMPLATE_112, estimate_transform, transform_points
from facekit.faces.detect import DlibDetector, InsightFaceDetector, landmarks68_to_5, make_detector
from facekit.errors import UserError
from facekit.faces.imageio import read_image

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


class _PlantedSCRFD(torch.nn.Module):
    """An SCRFD-format network (9 outputs: scores, box and keypoint distances at strides 8/16/32, two
    anchors per cell) that "detects" one fixed face at stride 32 in a 640² input."""

    def __init__(self, cell=(9, 10), box=(60.0, 70.0, 60.0, 90.0)):
        super().__init__()
        self.index = 2 * (cell[0] * 20 + cell[1])  # first anchor of cell (row, col) on the 20x20 map
        self.centre = (cell[1] * 32.0, cell[0] * 32.0)
        self.box = box
        self.kps = [(-25.0, -20.0), (25.0, -20.0), (0.0, 5.0), (-20.0, 35.0), (20.0, 35.0)]

    def forward(self, x):
        zero = x.mean() * 0.0  # keeps the input in the graph
        outs = [torch.zeros(n, width) + zero for width in (1, 4, 10) for n in (12800, 3200, 800)]
        score, boxes, kps = outs[2].clone(), outs[5].clone(), outs[8].clone()
        score[self.index, 0] = 0.9
        boxes[self.index] = torch.tensor(self.box) / 32.0
        kps[self.index] = torch.tensor([v for point in self.kps for v in point]) / 32.0
        return outs[0], outs[1], score, outs[3], outs[4], boxes, outs[6], outs[7], kps


def test_insightface_detector_runs_an_scrfd_pack_and_rescales_to_the_photo(tmp_path):
    import warnings

    pack = tmp_path / "buffalo_l"
    pack.mkdir()
    network = _PlantedSCRFD()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (torch.rand(1, 3, 640, 640),), str(pack / "det_10g.onnx"), dynamo=False, opset_version=11)
    detector = make_detector(tmp_path)
    face, = detector.detect(np.zeros((320, 320, 3), np.uint8))  # half size: everything scales by 1/2
    cx, cy = network.centre
    left, top, right, bottom = network.box
    assert np.allclose(face.bbox, np.array([cx - left, cy - top, cx + right, cy + bottom]) / 2, atol=0.5)
    assert np.allclose(face.landmarks5, (np.array(network.kps) + (cx, cy)) / 2, atol=0.5)
    assert abs(face.score - 0.9) < 1e-3 and face.landmarks68 is None
