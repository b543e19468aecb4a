"""Face detection with 5-point landmarks (ArcFace order: left eye, right eye, nose, left and right mouth corner,
"left" meaning the image's left).

Two backends give the same `Face` records: `InsightFaceDetector` (SCRFD/RetinaFace from a local insightface
model pack; nothing is ever downloaded) and `DlibDetector`, the offline default, whose HOG detector is built
into dlib and whose 68-point predictor ships inside the `face_recognition_models` package.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from facekit.errors import UserError


@dataclass
class Face:
    bbox: np.ndarray  # [4] x0, y0, x1, y1 in pixels
    score: float
    landmarks5: np.ndarray  # [5, 2] (x, y) in pixels
    landmarks68: np.ndarray | None = None  # [68, 2] when the backend gives them (gaze eye boxes)
    track: int | None = None  # in a video, the same number for the same face from frame to frame


class FaceDetector(Protocol):
    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an HxWx3 uint8 RGB image, largest first."""


def _largest_first(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda f: -float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])))


def landmarks68_to_5(points: np.ndarray) -> np.ndarray:
    """ArcFace's 5 points from the 68-point (iBUG) layout: eye centres, nose tip, mouth corners."""
    points = np.asarray(points, dtype=np.float32)
    return np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])


def package_file(package: str, *parts: str) -> Path:
    # find_spec does not import the package (face_recognition_models' __init__ needs pkg_resources).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the offline face detector needs the '{package}' package: pip install {package.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0], *parts)


class LandmarkPredictor:
    """dlib's iBUG 68-point shape predictor (it ships inside `face_recognition_models`): the landmarks of the
    face in a box drawn the way dlib's HOG detector draws them. About 2 ms a face."""

    def __init__(self):
        try:
            import dlib
        except ImportError:
            raise UserError("the offline face detector needs dlib: pip install dlib-bin") from None
        predictor = package_file("face_recognition_models", "models", "shape_predictor_68_face_landmarks.dat")
        if not predictor.is_file():
            raise UserError(f"{predictor}: missing; reinstall face-recognition-models")
        self._predictor = dlib.shape_predictor(str(predictor))
        self._rectangle = dlib.rectangle

    def __call__(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """[68, 2] (x, y) pixels in an HxW(x3) uint8 image, for a box x0, y0, x1, y1."""
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        shape = self._predictor(image, self._rectangle(x0, y0, x1, y1))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


class DlibDetector:
    """dlib's HOG frontal-face detector + the iBUG 68-point shape predictor; CPU-only, no download."""

    def __init__(self, upsample: int = 1, min_score: float = 0.0):
        import dlib  # LandmarkPredictor has said how to install it

        self.predictor = LandmarkPredictor()
        self._detector = dlib.get_frontal_face_detector()
        self.upsample, self.min_score = upsample, min_score

    def detect(self, image: np.ndarray) -> list[Face]:
        image = np.ascontiguousarray(image, dtype=np.uint8)
        rects, scores, _ = self._detector.run(image, self.upsample, self.min_score)
        faces = []
        for rect, score in zip(rects, scores):
            bbox = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float32)
            points = self.predictor(image, bbox)
            faces.append(Face(bbox, float(score), landmarks68_to_5(points), points))
        return _largest_first(faces)


class InsightFaceDetector:
    """SCRFD/RetinaFace from an insightface model pack on disk (`models_dir/<pack>/det_*.onnx`)."""

    def __init__(self, models_dir: str | Path, pack: str = "buffalo_l", det_size: int = 640, threshold: float = 0.5):
        folder = Path(models_dir).expanduser() / pack
        candidates = sorted(folder.glob("det_*.onnx")) + sorted(folder.glob("scrfd*.onnx")) if folder.is_dir() else []
        if not candidates:
            raise UserError(
                f"no insightface detector in {folder}: put the '{pack}' model pack there (e.g. {folder}/det_10g.onnx "
                "from buffalo_l, or any scrfd_*.onnx), or use the offline detector; nothing is downloaded"
            )
        from insightface.model_zoo import get_model

        try:
            self._model = get_model(str(candidates[0]), providers=["CPUExecutionProvider"])
            self._model.prepare(ctx_id=-1, input_size=(det_size, det_size), det_thresh=threshold)
        except Exception as err:  # a damaged or foreign ONNX file
            raise UserError(f"{candidates[0]}: not a usable insightface detector ({err})") from None
        self.model_file = candidates[0]

    def detect(self, image: np.ndarray) -> list[Face]:
        bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
        boxes, keypoints = self._model.detect(bgr, max_num=0)
        if keypoints is None:
            raise UserError(f"{self.model_file}: this detector gives no landmarks; use an SCRFD/RetinaFace with keypoints")
        faces = [Face(box[:4].astype(np.float32), float(box[4]), kps.astype(np.float32)) for box, kps in zip(boxes, keypoints)]
        return _largest_first(faces)


def landmark_predictor(detector: FaceDetector) -> LandmarkPredictor:
    """The 68-point predictor to refine faces with: the dlib detector's own, or one loaded for another detector."""
    return detector.predictor if isinstance(detector, DlibDetector) else LandmarkPredictor()


def make_detector(models_dir: str | Path | None = None, pack: str = "buffalo_l") -> FaceDetector:
    """insightface when a model folder is given (the accurate choice), else the offline dlib default."""
    if models_dir is not None:
        return InsightFaceDetector(models_dir, pack)
    return DlibDetector()
