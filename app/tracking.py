"""Following faces through a video: detect on key frames, refine landmarks in the tracked box in between.

Detecting every frame is what made video slow (dlib's HOG on a 720p frame: ~0.4 s). Here the detector runs on
a downscaled copy of the frame, and only on key frames: the first, every `every` frames, after a scene cut,
and when a track is lost. In between, the 68-point predictor (~2 ms) is given the box the detector would have
drawn: at a key frame the tracker records where the detector's box sits relative to the landmarks (their
centre and spread), and on the following frames it places the same box around the face's predicted position,
so the predictor always sees the framing it was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from facekit.faces.align import estimate_transform
from facekit.faces.detect import Face, FaceDetector, LandmarkPredictor, landmarks68_to_5

_THUMB = (32, 18)  # scene-cut thumbnail (width, height)
_PATCH = 32  # aligned grey face patch for the lost-track check


@dataclass(frozen=True)
class TrackerSettings:
    every: int = 10  # frames between key frames (1 = detect every frame)
    detect_width: int = 640  # key frames are detected at this width; faces narrower than ~1/8 of it are missed
    cut: float = 25.0  # mean absolute change of a 32x18 grey thumbnail (0-255) that counts as a scene cut
    lost: float = 0.5  # correlation of the aligned face with its key-frame look below which a track is lost


def _landmark_frame(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and spread (RMS distance to the centre) of a landmark set."""
    centre = points.mean(0)
    return centre, float(np.sqrt(((points - centre) ** 2).sum(1).mean()))


def _appearance(gray: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
    """The face aligned to a small grey patch, zero mean and unit norm (for normalised correlation)."""
    matrix = estimate_transform(landmarks5, _PATCH, mode="similarity")
    patch = cv2.warpAffine(gray, matrix, (_PATCH, _PATCH), flags=cv2.INTER_AREA).astype(np.float32).ravel()
    patch -= patch.mean()
    return patch / max(float(np.linalg.norm(patch)), 1e-6)


@dataclass
class _Track:
    box_offsets: np.ndarray  # the detector's box (x0, y0, x1, y1) around the landmark centre, in spreads
    landmarks: np.ndarray  # [68, 2] on the last frame
    look: np.ndarray  # appearance at the key frame
    number: int  # the face's track number, kept while re-detections find it where the track was
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2, np.float32))

    def box(self) -> np.ndarray:
        """Where the detector's box would be on the next frame (constant velocity)."""
        centre, spread = _landmark_frame(self.landmarks)
        centre = centre + self.velocity
        return np.concatenate([centre, centre]) + self.box_offsets * spread


def _earlier_track(centre: np.ndarray, spread: float, previous: list[_Track]) -> _Track | None:
    """The track a re-detected face continues: the nearest earlier one, when within one spread (None for a new
    face). It is removed from `previous`, so two faces never continue the same track."""
    distances = [float(np.linalg.norm(centre - _landmark_frame(track.landmarks)[0])) for track in previous]
    if not distances or min(distances) >= spread:
        return None
    return previous.pop(int(np.argmin(distances)))


@dataclass
class TrackerStats:
    frames: int = 0
    key_frames: int = 0
    cuts: int = 0
    lost: int = 0
    with_faces: int = 0  # frames where at least one face was found


class FaceTracker:
    """Callable like a detector (frame -> faces, largest first at the last key frame), but stateful: call it on
    consecutive frames of one video."""

    def __init__(self, detector: FaceDetector, predictor: LandmarkPredictor, settings: TrackerSettings = TrackerSettings()):
        self.detector, self.predictor, self.settings = detector, predictor, settings
        self.tracks: list[_Track] = []
        self.stats = TrackerStats()
        self._thumb: np.ndarray | None = None
        self._numbers = 0  # track numbers handed out

    def __call__(self, frame: np.ndarray) -> list[Face]:
        gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        cut = self._scene_cut(gray)
        key = not self.tracks or cut or self.stats.frames % self.settings.every == 0
        faces = None if key else self._follow(gray)
        if faces is None:
            faces = self._detect(frame, gray, continue_tracks=not cut)
        self.stats.frames += 1
        self.stats.cuts += cut
        self.stats.with_faces += bool(faces)
        return faces

    def _scene_cut(self, gray: np.ndarray) -> bool:
        step = max(1, gray.shape[1] // (8 * _THUMB[0]))  # subsample first: an area resize of a whole frame costs 0.7 ms
        thumb = cv2.resize(gray[::step, ::step], _THUMB, interpolation=cv2.INTER_AREA).astype(np.float32)
        previous, self._thumb = self._thumb, thumb
        return previous is not None and float(np.abs(thumb - previous).mean()) > self.settings.cut

    def _detect(self, frame: np.ndarray, gray: np.ndarray, continue_tracks: bool = True) -> list[Face]:
        """Faces found anew. One found where an earlier track was continues it (its number, its motion) unless
        the scene has cut."""
        self.stats.key_frames += 1
        scale = min(1.0, self.settings.detect_width / frame.shape[1])
        small = frame if scale == 1.0 else cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        faces, previous, self.tracks = [], (self.tracks if continue_tracks else []), []
        for found in self.detector.detect(small):
            box = found.bbox / scale
            points = self.predictor(gray, box)  # refined at full resolution
            centre, spread = _landmark_frame(points)
            offsets = (box - np.concatenate([centre, centre])) / spread
            landmarks5 = landmarks68_to_5(points)
            earlier = _earlier_track(centre, spread, previous)
            if earlier is None:
                self._numbers += 1
            number = self._numbers if earlier is None else earlier.number
            track = _Track(offsets, points, _appearance(gray, landmarks5), number)
            if earlier is not None:  # it keeps moving as it did
                track.velocity = (centre - _landmark_frame(earlier.landmarks)[0]).astype(np.float32)
            self.tracks.append(track)
            faces.append(Face(box.astype(np.float32), found.score, landmarks5, points, track=number))
        return faces

    def _follow(self, gray: np.ndarray) -> list[Face] | None:
        """Faces from the tracks, or None when one is lost (the caller detects again)."""
        faces = []
        for track in self.tracks:
            box = track.box()
            points = self.predictor(gray, box)
            landmarks5 = landmarks68_to_5(points)
            if float(_appearance(gray, landmarks5) @ track.look) < self.settings.lost:
                self.stats.lost += 1
                return None
            track.velocity = _landmark_frame(points)[0] - _landmark_frame(track.landmarks)[0]
            track.landmarks = points
            faces.append(Face(box.astype(np.float32), 1.0, landmarks5, points, track=track.number))
        return faces
