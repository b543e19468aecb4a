"""Video face tracking: landmarks followed between key frames stay where per-frame detection puts them, scene
cuts and lost faces trigger a new detection, and the decode/swap/encode threads pass errors on."""
import os
import signal
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.tracking import FaceTracker, TrackerSettings
from facekit.faces.detect import DlibDetector
from facekit.faces.imageio import read_image
from facekit.faces.video import consume_behind, read_ahead, write_video

insightface = pytest.importorskip("insightface")
GROUP = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"


@pytest.fixture(scope="module")
def detector():
    return DlibDetector(upsample=0)


@pytest.fixture(scope="module")
def face_patch():
    """The group photo's most frontal face with its surroundings, scaled to ~200 px wide (a 720p close-up)."""
    image = read_image(GROUP)
    x0, y0, x1, y1 = DlibDetector().detect(image)[1].bbox.astype(int)
    pad = x1 - x0
    patch = image[y0 - pad : y1 + pad, x0 - pad : x1 + pad]
    return cv2.resize(patch, None, fx=600 / patch.shape[0], fy=600 / patch.shape[0]), cv2.resize(cv2.GaussianBlur(image, (0, 0), 8), (1280, 720))


def _moving_clip(face_patch, frames: int, phase: float = 0.0, background=None) -> list[np.ndarray]:
    """The face gliding (up to 22 px a frame), turning (±6°) and zooming (±15 %) over a blurred background at
    720p."""
    patch, blurred = face_patch
    background = blurred if background is None else background
    out = []
    for i in range(frames):
        a = phase + i / 90 * 2 * np.pi
        matrix = cv2.getRotationMatrix2D((patch.shape[1] / 2, patch.shape[0] / 2), 6 * np.sin(1.5 * a), 1 + 0.15 * np.sin(a))
        matrix[:, 2] += [640 + 320 * np.sin(a) - patch.shape[1] / 2, 360 + 72 * np.cos(2 * a) - patch.shape[0] / 2]
        face = cv2.warpAffine(patch, matrix, (1280, 720))
        alpha = cv2.warpAffine(np.ones(patch.shape[:2], np.float32), matrix, (1280, 720))[..., None]
        out.append((background * (1 - alpha) + face * alpha).astype(np.uint8))
    return out


def _error_px(faces, reference) -> float:
    """Mean distance of the 68 landmarks to those of per-frame detection at full resolution."""
    return float(np.linalg.norm(faces[0].landmarks68 - reference[0].landmarks68, axis=1).mean())


def test_tracked_landmarks_stay_within_2_px_of_per_frame_detection(detector, face_patch):
    clip = _moving_clip(face_patch, 16)
    tracker = FaceTracker(detector, detector.predictor, TrackerSettings(every=8))
    errors = []
    for frame in clip:
        faces = tracker(frame)
        assert len(faces) == 1 and faces[0].track == 1  # the key frame's re-detection continues the track
        errors.append(_error_px(faces, detector.detect(frame)))
    assert tracker.stats.key_frames == 2 and tracker.stats.lost == 0
    assert max(errors) <= 2.0, errors


def test_a_scene_cut_and_a_vanished_face_bring_detection_back(detector, face_patch):
    first = _moving_clip(face_patch, 3)
    second = _moving_clip(face_patch, 3, phase=np.pi, background=255 - face_patch[1])  # a new shot, face elsewhere
    tracker = FaceTracker(detector, detector.predictor, TrackerSettings(every=100))
    for frame in first:
        assert len(tracker(frame)) == 1
    faces = tracker(second[0])
    assert tracker.stats.cuts == 1 and tracker.stats.key_frames == 2
    assert faces[0].track == 2  # after a cut a face starts a track of its own
    assert _error_px(faces, detector.detect(second[0])) <= 2.0
    background = face_patch[1]
    assert tracker(background) == []  # the face is gone (a cut here too: detected, nothing found)
    assert tracker(second[1]) != []  # and back: with no track, every frame is a key frame
    faces = tracker(second[2])
    assert len(faces) == 1 and _error_px(faces, detector.detect(second[2])) <= 2.0


def test_a_face_covered_while_tracked_is_reported_lost(detector, face_patch):
    clip = _moving_clip(face_patch, 2)
    tracker = FaceTracker(detector, detector.predictor, TrackerSettings(every=100, cut=255))
    tracker(clip[0])
    covered = clip[1].copy()
    x0, y0, x1, y1 = tracker.tracks[0].box().astype(int)
    covered[max(y0, 0) : y1, max(x0, 0) : x1] = np.random.default_rng(0).integers(0, 256, (y1 - max(y0, 0), x1 - max(x0, 0), 3))
    assert tracker(covered) == [] and tracker.stats.lost == 1


def test_smoothing_follows_each_tracked_face_when_their_order_changes():
    from app.swap import FaceSwapRun
    from facekit.faces.align import estimate_transform, template_points
    from facekit.faces.detect import Face

    template = template_points(224, "arcface")
    left, right = template * 0.5 + [100, 200], template * 0.5 + [500, 200]
    frames = [[(left, 1), (right, 2)]] * 3 + [[(right, 2), (left, 1)]]  # the largest-first order flips
    faces = iter([[Face(np.zeros(4), 1.0, points, track=track) for points, track in frame] for frame in frames])

    class Swapper:
        size = 224

    run = FaceSwapRun(lambda frame: next(faces), Swapper(), smooth_rate=30.0)
    for _ in frames:
        prepared = run.prepare(np.zeros((480, 800, 3), np.uint8))
    for matrix, (points, _) in zip(prepared.transforms, frames[-1]):  # each face still aligned where it is
        assert np.abs(matrix - estimate_transform(points, 224, mode="affine")).max() < 1e-6


def test_read_ahead_passes_items_in_order_raises_producer_errors_and_stops_with_the_consumer():
    assert list(read_ahead(range(50), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("decoding failed")

    with pytest.raises(ValueError, match="decoding failed"):
        list(read_ahead(failing()))
    produced = []

    def counting():
        for i in range(1000):
            produced.append(i)
            yield i

    for item in read_ahead(counting(), depth=2):
        if item == 5:
            break
    assert len(produced) < 20  # the producer stopped soon after the consumer


def _priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_the_encoder_runs_behind_at_lower_priority_and_an_interrupted_swap_leaves_no_file(tmp_path):
    """The swap (the slow stage) produces on the calling thread at its priority; the encoder consumes on a
    thread of its own, niced below it, so on 2 cores the swap keeps a core. Errors cross over both ways."""
    seen = {}

    def consume(items):
        seen["priority"] = _priority()
        return sum(items)

    before = _priority()
    assert consume_behind(consume, range(100), depth=3, niceness=5) == sum(range(100))
    assert _priority() == before
    if sys.platform.startswith("linux"):
        assert seen["priority"] == min(19, before + 5)
        assert list(read_ahead((_priority() for _ in range(2)), niceness=5)) == [min(19, before + 5)] * 2  # the decoder

    def broken_encoder(items):
        next(items)
        raise OSError("disk full")

    produced = []
    with pytest.raises(OSError, match="disk full"):
        consume_behind(broken_encoder, (produced.append(i) for i in range(10**6)), depth=2)
    assert len(produced) < 100  # the producer stopped soon after the consumer, it did not run to the end

    def swaps():
        yield np.zeros((32, 32, 3), np.uint8)
        raise KeyboardInterrupt

    out = tmp_path / "swapped.mp4"
    with pytest.raises(KeyboardInterrupt):
        consume_behind(lambda frames: write_video(out, frames, 25), swaps())
    assert list(tmp_path.iterdir()) == []  # the encoder saw the interruption: no file, no temporary left

    main, written = threading.main_thread().ident, []

    def ctrl_c_after_the_last_frame(frames):  # Ctrl-C while the encoder flushes and muxes the soundtrack
        yield from frames
        signal.pthread_kill(main, signal.SIGINT)  # a real SIGINT: it wakes a blocked wait, as Ctrl-C does
        time.sleep(0.3)

    def encode(frames):
        written.append(write_video(out, ctrl_c_after_the_last_frame(frames), 25))

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # run in the background, SIGINT is ignored
    try:
        with pytest.raises(KeyboardInterrupt):
            consume_behind(encode, [np.zeros((32, 32, 3), np.uint8)] * 3)
    finally:
        signal.signal(signal.SIGINT, before)
    assert written == [out]  # raised once the encoder had finished its file, not while it wrote
    assert [p.name for p in tmp_path.iterdir()] == ["swapped.mp4"]  # the whole video, no temporary left behind
