"""`distilswap swap` on real photos shipped by the insightface package, with a student in the official
layout filled with random weights: geometry, not beauty (faces land where the target's faces were, the
rest of the picture is untouched, the output keeps the input's size)."""
from pathlib import Path

import numpy as np
import pytest
import torch

import distilswap
from facekit.faces.detect import DlibDetector
from facekit.identity import save_identity
from facekit.faces.imageio import read_image, write_image
from student.checkpoint import save_student
from student.model import MobileFaceSwap

insightface = pytest.importorskip("insightface")
GROUP = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("swap")
    torch.manual_seed(0)
    checkpoint = save_student(MobileFaceSwap(), root / "student.safetensors")  # official 224² layout, random
    gen = torch.Generator().manual_seed(1)
    identity = save_identity(root / "someone.npz", torch.randn(1, 512, generator=gen), torch.randn(1, 512, 7, 7, generator=gen))
    faces = DlibDetector().detect(read_image(GROUP))
    return root, checkpoint, identity, faces


def _face_boxes(shape, faces, grow: float = 0.6) -> np.ndarray:
    """Pixels within the (enlarged) face boxes: the only place a swap may change anything."""
    inside = np.zeros(shape[:2], bool)
    for face in faces:
        x0, y0, x1, y1 = face.bbox
        dx, dy = (x1 - x0) * grow, (y1 - y0) * grow
        inside[max(0, int(y0 - dy)) : int(y1 + dy) + 1, max(0, int(x0 - dx)) : int(x1 + dx) + 1] = True
    return inside


def test_all_faces_are_swapped_in_place_and_the_rest_is_untouched(assets):
    root, checkpoint, identity, faces = assets
    out = root / "all.png"
    code = distilswap.main(["swap", "--model", str(checkpoint), "--source", str(identity), "--target", str(GROUP), "--out", str(out)])
    assert code == 0
    before, after = read_image(GROUP), read_image(out)
    assert after.shape == before.shape
    changed = np.abs(after.astype(int) - before.astype(int)).max(axis=2) > 0
    assert not changed[~_face_boxes(before.shape, faces)].any()
    for face in faces:  # every face got swapped
        x0, y0, x1, y1 = face.bbox.astype(int)
        assert changed[y0:y1, x0:x1].mean() > 0.2


def test_a_chosen_face_is_the_only_one_changed(assets):
    root, checkpoint, identity, faces = assets
    out = root / "one.png"
    assert distilswap.main(["swap", "--model", str(checkpoint), "--source", str(identity), "--target", str(GROUP),
                            "--out", str(out), "--face-index", "0"]) == 0
    before, after = read_image(GROUP), read_image(out)
    changed = np.abs(after.astype(int) - before.astype(int)).max(axis=2) > 0
    assert not changed[~_face_boxes(before.shape, faces[:1])].any()
    assert changed[_face_boxes(before.shape, faces[:1], grow=0.0)].mean() > 0.2


def test_compare_and_refusals(assets, capsys):
    root, checkpoint, identity, _ = assets
    out = root / "cmp.png"
    assert distilswap.main(["swap", "--model", str(checkpoint), "--source", str(identity), "--target", str(GROUP), "--out", str(out), "--compare"]) == 0
    assert read_image(out).shape[1] == 2 * read_image(GROUP).shape[1]  # target | result (an identity file has no picture)
    assert distilswap.main(["swap", "--model", str(checkpoint), "--source", str(identity), "--target", str(GROUP), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    blank = root / "blank.png"
    write_image(blank, np.full((200, 200, 3), 128, np.uint8))
    assert distilswap.main(["swap", "--model", str(checkpoint), "--source", str(identity), "--target", str(blank), "--out", str(root / "x.png")]) == 2
    assert "no face found" in capsys.readouterr().err
    assert not (root / "x.png").exists()
    for index, message in (("-1", "numbered from 0"), ("99", "has 6 face(s)")):
        assert distilswap.main(["swap", "--model", str(checkpoint), "--source", str(identity), "--target", str(GROUP),
                                "--out", str(root / "x.png"), "--face-index", index]) == 2
        assert message in capsys.readouterr().err


def test_video_keeps_frame_count_size_and_audio(assets):
    av = pytest.importorskip("av")
    from facekit.faces.video import video_info

    root, checkpoint, identity, faces = assets
    x0, y0, x1, y1 = faces[0].bbox.astype(int)
    pad = (x1 - x0)
    frame = read_image(GROUP)[max(0, y0 - pad) : y1 + pad, max(0, x0 - pad) : x1 + pad]
    frame = frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2]
    clip = root / "clip.mp4"
    _write_clip_with_audio(av, clip, [np.roll(frame, shift, axis=1) for shift in range(4)])
    out = root / "clip_swapped.mp4"
    assert distilswap.main(["swap", "--model", str(checkpoint), "--source", str(identity), "--target", str(clip), "--out", str(out)]) == 0
    src, dst = video_info(clip), video_info(out)
    assert (dst.width, dst.height, dst.frames, dst.fps) == (src.width, src.height, src.frames, src.fps)
    assert dst.has_audio


def test_a_video_without_faces_is_written_with_a_warning(assets, capsys):
    av = pytest.importorskip("av")
    root, checkpoint, identity, _ = assets
    clip, out = root / "empty.mp4", root / "empty_swapped.mp4"
    _write_clip_with_audio(av, clip, [np.full((64, 96, 3), 40 * i, np.uint8) for i in range(3)])
    assert distilswap.main(["swap", "--model", str(checkpoint), "--source", str(identity), "--target", str(clip),
                            "--out", str(out), "--stats"]) == 0
    captured = capsys.readouterr()
    assert "faces in 0 of 3 frames" in captured.out
    assert "warning: no face found in any of the 3 frames" in captured.err and out.is_file()


def _write_clip_with_audio(av, path, frames, fps=10):
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        for image in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode(None))
        samples = (np.sin(np.arange(16000 * len(frames) // fps) / 5) * 0.3).astype(np.float32)[None]
        for start in range(0, samples.shape[1], 1024):
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start : start + 1024]), format="fltp", layout="mono")
            chunk.sample_rate = 16000
            container.mux(audio.encode(chunk))
        container.mux(audio.encode(None))


def test_the_exported_phone_graph_swaps_like_the_pytorch_student_on_both_engines(assets):
    """The baked ONNX (what ships to a phone) checked on a desktop photo, on ONNX Runtime and on OpenVINO: same
    faces, same pixels ±1."""
    from export.onnx_export import export_baked
    from facekit.identity import load_identity
    from student.checkpoint import load_student

    root, checkpoint, identity, _ = assets
    _, embedding, feature_map = load_identity(identity)
    onnx_path = export_baked(load_student(checkpoint).bake(embedding, feature_map), root / "swapper_someone.onnx", {})
    runs = {"torch.png": (checkpoint, "onnxruntime"), "onnx.png": (onnx_path, "onnxruntime"),
            "openvino.png": (onnx_path, "openvino"), "checkpoint_openvino.png": (checkpoint, "openvino")}
    for out, (model, engine) in runs.items():
        assert distilswap.main(["swap", "--model", str(model), "--source", str(identity), "--target", str(GROUP),
                                "--out", str(root / out), "--face-index", "0", "--engine", engine]) == 0
    by_torch = read_image(root / "torch.png").astype(int)
    for out in ("onnx.png", "openvino.png", "checkpoint_openvino.png"):  # a checkpoint on OpenVINO: baked, exported
        assert np.abs(by_torch - read_image(root / out).astype(int)).max() <= 1, out
