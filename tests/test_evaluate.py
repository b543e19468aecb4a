"""`distilswap evaluate` on real photos (insightface's sample group photo): the judges behave as a user relies
on: no swap keeps the target's identity and finds the right source only by chance, pasting the source's own
face finds it every time, a mirrored face has a large pose error, and the report resumes from its cache."""
import json
from pathlib import Path

import numpy as np
import pytest

import distilswap
from app.evaluate import evaluate, list_pairs, paste_source
from facekit.faces.detect import DlibDetector
from facekit.faces.imageio import read_image, write_image

insightface = pytest.importorskip("insightface")
GROUP = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Six people of the group photo, each cut out as a photo of their own: three sources, three targets."""
    root = tmp_path_factory.mktemp("photos")
    image = read_image(GROUP)
    faces = DlibDetector().detect(image)
    for folder, chosen in (("sources", (1, 2, 5)), ("targets", (0, 3, 4))):
        (root / folder).mkdir()
        for i in chosen:
            x0, y0, x1, y1 = faces[i].bbox.astype(int)
            pad = x1 - x0
            crop = image[max(0, y0 - pad) : y1 + pad, max(0, x0 - pad) : x1 + pad]
            write_image(root / folder / f"person{i}.png", crop)
    return root


def no_swap(source, source_face, target, target_face):
    return target


def mirror(source, source_face, target, target_face):
    return np.ascontiguousarray(target[:, ::-1])


def test_the_judges_score_floor_ceiling_and_mirror_as_they_should(photos, tmp_path):
    pairs = list_pairs(photos / "sources", photos / "targets", None)
    assert len(pairs) == 9
    from facekit.experts.expert_loader import load_embedder

    report = evaluate({"target": no_swap, "paste": paste_source, "mirror": mirror}, pairs, tmp_path / "eval",
                      DlibDetector(), progress=False, recognizers={"small": load_embedder("models/experts")})
    floor, paste, mirrored = (report["models"][m] for m in ("target", "paste", "mirror"))
    # no swap: the target's identity; each target is nearest to one of the 3 sources, whoever the pair names
    assert floor["id_cos_target"] > 0.99 and floor["retrieval_top1"] == pytest.approx(1 / 3)
    assert floor["pose_error_deg"] < 1.0 and floor["background_l1"] == 0
    assert paste["retrieval_top1"] == 1.0 and paste["id_cos_source"] > paste["id_cos_target"] + 0.05
    assert paste["id_cos_source"] > floor["id_cos_source"] + 0.05  # dlib's unit descriptors: strangers ≈ 0.7-0.85
    assert paste["background_psnr"] > 30  # only the face was replaced
    assert mirrored["pose_error_deg"] > 10 * max(floor["pose_error_deg"], 0.5)
    # a second judge, scored the same way (the shipped small embedder: trained on synthetic faces only)
    assert paste["small_retrieval_top1"] >= floor["small_retrieval_top1"] and "small_cos_source" in mirrored
    rows = (tmp_path / "eval" / "pairs.csv").read_text().splitlines()
    assert len(rows) == 1 + 27 and (tmp_path / "eval" / "sheet.png").is_file()
    assert "| paste | " in (tmp_path / "eval" / "results.md").read_text()


def test_the_command_line_resumes_from_its_cache_and_lists_pairs_without_faces(photos, tmp_path, capsys, caplog):
    write_image(photos / "targets" / "wall.png", np.full((200, 200, 3), 128, np.uint8))
    try:
        argv = ["evaluate", "--model", "target", "--model", "paste", "--sources", str(photos / "sources"),
                "--targets", str(photos / "targets"), "--out", str(tmp_path / "eval")]
        assert distilswap.main(argv) == 0
        first = json.loads((tmp_path / "eval" / "results.json").read_text())
        assert first["pairs"] == 9 and len(first["skipped"]) == 3
        assert all("wall.png: no face found" in s["reason"] for s in first["skipped"])
        assert "3 pair(s) skipped" in capsys.readouterr().out
        cached = sorted((tmp_path / "eval" / "cache").rglob("*.json"))
        assert len(cached) == 18
        cached[0].write_text('{"model": ')  # a row damaged (a bad copy) is scored again, not fatal
        stamps = [p.stat().st_mtime_ns for p in cached]
        assert distilswap.main(argv) == 0  # resumed: nothing else is swapped or scored again
        assert [p for p, stamp in zip(cached, stamps) if p.stat().st_mtime_ns != stamp] == [cached[0]]
        assert f"{cached[0]}: damaged" in caplog.text
        assert json.loads((tmp_path / "eval" / "results.json").read_text())["models"] == first["models"]
    finally:
        (photos / "targets" / "wall.png").unlink()


def test_rows_cached_by_an_older_scoring_are_scored_again_and_left_in_place(photos, tmp_path):
    """Rows cached before a scoring fix (e.g. sideways video frames) would otherwise keep their wrong scores."""
    pairs = list_pairs(photos / "sources", photos / "targets", None)[:1]
    fresh = evaluate({"target": lambda s, sf, t, tf: t}, pairs, tmp_path / "new", DlibDetector(), progress=False)
    (row_file,) = (tmp_path / "new" / "cache").rglob("*.json")
    old = tmp_path / "old" / "cache" / row_file.parent.name / row_file.name  # the layout before versions
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({**json.loads(row_file.read_text()), "id_cos_source": 0.99}))
    again = evaluate({"target": lambda s, sf, t, tf: t}, pairs, tmp_path / "old", DlibDetector(), progress=False)
    assert again["models"]["target"]["id_cos_source"] == pytest.approx(fresh["models"]["target"]["id_cos_source"])
    assert json.loads(old.read_text())["id_cos_source"] == 0.99  # the user's old cache is not touched


def test_a_judge_added_later_rescores_the_cached_rows(photos, tmp_path):
    from facekit.experts.expert_loader import load_embedder

    pairs = list_pairs(photos / "sources", photos / "targets", None)[:2]
    first = evaluate({"paste": paste_source}, pairs, tmp_path / "eval", DlibDetector(), progress=False)
    assert "small_cos_source" not in first["models"]["paste"]
    cached = sorted((tmp_path / "eval" / "cache").rglob("*.json"))
    judged = evaluate({"paste": paste_source}, pairs, tmp_path / "eval", DlibDetector(), progress=False,
                      recognizers={"small": load_embedder("models/experts")})
    assert "small_cos_source" in judged["models"]["paste"] and "small_retrieval_top1" in judged["models"]["paste"]
    assert all("small_cos_source" in json.loads(p.read_text()) for p in cached)  # the cache holds the new judge
    assert judged["models"]["paste"]["id_cos_source"] == pytest.approx(first["models"]["paste"]["id_cos_source"])


def test_a_one_shot_onnx_swapper_of_another_project_is_a_model_for_swap_and_evaluate(photos, tmp_path):
    from test_teacher_pairs import tiny_onnx_swapper

    tiny_onnx_swapper(tmp_path / "inswapper_like.onnx", size=128)
    source, target = photos / "sources" / "person1.png", photos / "targets" / "person0.png"
    out = tmp_path / "swapped.png"
    assert distilswap.main(["swap", "--model", str(tmp_path / "inswapper_like.onnx"), "--onnx-emap", "--source",
                            str(source), "--embedder", "models/experts", "--target", str(target), "--out", str(out)]) == 0
    before, after = read_image(target), read_image(out)
    face = DlibDetector().detect(before)[0]
    changed = np.abs(after.astype(int) - before).sum(2) > 0
    x0, y0, x1, y1 = face.bbox.astype(int)
    assert changed[y0:y1, x0:x1].mean() > 0.5 and changed.mean() < 0.5  # the face replaced, the rest kept
    assert distilswap.main(["evaluate", "--model", str(tmp_path / "inswapper_like.onnx"), "--onnx-emap", "--embedder",
                            "models/experts", "--sources", str(photos / "sources"), "--targets", str(photos / "targets"),
                            "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    scores = report["models"][str(tmp_path / "inswapper_like.onnx")]
    assert report["pairs"] == 9 and 0 < scores["background_l1"] < 0.05
    # the same file on OpenVINO, into the same folder: scored anew (not ONNX Runtime's cached rows), alike
    assert distilswap.main(["evaluate", "--model", str(tmp_path / "inswapper_like.onnx"), "--onnx-emap", "--embedder",
                            "models/experts", "--sources", str(photos / "sources"), "--targets", str(photos / "targets"),
                            "--out", str(tmp_path / "eval"), "--engine", "openvino"]) == 0
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert report["engine"] == "openvino" and len(list((tmp_path / "eval" / "cache").glob("v*-openvino/*/*.json"))) == 9
    assert report["models"][str(tmp_path / "inswapper_like.onnx")]["background_l1"] == pytest.approx(
        scores["background_l1"], abs=1e-3)


def test_target_videos_get_temporal_stability_and_a_shaky_swap_scores_worse(photos, tmp_path):
    import cv2

    from facekit.faces.video import write_video

    patch = read_image(photos / "targets" / "person0.png")
    frames = []
    for i in range(8):  # the face gliding 4 px a frame
        matrix = np.float32([[1, 0, 40 + 4 * i], [0, 1, 20]])
        frames.append(cv2.warpAffine(patch, matrix, (patch.shape[1] + 80, patch.shape[0] + 40), borderMode=cv2.BORDER_REFLECT))
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "clip.mp4", frames, 10)
    rng = np.random.default_rng(0)

    def shaky(source, source_face, target, target_face):  # pastes the source a few pixels off, differently each frame
        from facekit.faces.detect import Face

        moved = Face(target_face.bbox, 1.0, target_face.landmarks5 + rng.normal(0, 3, (5, 2)).astype(np.float32),
                     target_face.landmarks68)
        return paste_source(source, source_face, target, moved)

    pairs = list_pairs(photos / "sources", tmp_path / "videos", None, frames=3)
    assert len(pairs) == 9 and {p.frame for p in pairs} == {0, 4, 7}
    report = evaluate({"target": no_swap, "paste": paste_source, "shaky": shaky}, pairs, tmp_path / "eval",
                      DlibDetector(), progress=False, temporal_frames=6)
    floor, paste, wobbly = (report["models"][m] for m in ("target", "paste", "shaky"))
    assert floor["landmark_jitter"] == 0 and floor["warp_error"] == 0  # the input itself
    assert wobbly["landmark_jitter"] > paste["landmark_jitter"] and wobbly["warp_error"] > paste["warp_error"]
    assert "landmark jitter" in (tmp_path / "eval" / "results.md").read_text()


def test_late_faces_five_point_detectors_and_videos_without_a_frame_count(photos, tmp_path):
    import av
    from dataclasses import replace

    from facekit.faces.video import write_video

    patch = read_image(photos / "targets" / "person0.png")
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "late.mp4", [np.full_like(patch, 90)] * 2 + [patch] * 4, 10)  # face from frame 2

    class FivePoints:  # like insightface's SCRFD: boxes and 5 landmarks, no 68
        def detect(self, image):
            return [replace(face, landmarks68=None) for face in DlibDetector().detect(image)]

    pairs = list_pairs(photos / "sources", tmp_path / "videos", None, frames=3)
    report = evaluate({"target": no_swap}, pairs, tmp_path / "eval", FivePoints(), progress=False, temporal_frames=3)
    assert report["pairs"] == 6 and report["models"]["target"]["landmark_jitter"] == 0  # measured from frame 2 on
    assert {s["frame"] for s in report["skipped"]} == {0}  # the faceless first frame, listed

    with av.open(str(tmp_path / "clip.mkv"), "w") as container:  # Matroska declares no frame count
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(24):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i, np.uint8), format="rgb24")))
        container.mux(stream.encode(None))
    (tmp_path / "mkv").mkdir()
    (tmp_path / "clip.mkv").rename(tmp_path / "mkv" / "clip.mkv")
    assert sorted({p.frame for p in list_pairs(photos / "sources", tmp_path / "mkv", None, frames=4)}) == [0, 8, 15, 23]


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A torchvision Inception-v3 state dict as a user would have one on disk (random weights, BatchNorm
    statistics taken from the photos so the features are of a sensible scale; classifier and aux heads kept)."""
    import torch
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batch
    crops = torch.from_numpy(read_image(GROUP)).permute(2, 0, 1)[None].float() / 255
    batch = torch.cat([torch.nn.functional.interpolate(crops[..., :, i * 150:i * 150 + 300], size=(299, 299))
                       for i in range(4)]) * 2 - 1
    with torch.no_grad():
        model.train()(batch)
    path = tmp_path_factory.mktemp("inception") / "inception_v3_google.pth"
    torch.save(model.state_dict(), path)
    return path


def test_fid_from_local_inception_weights_ranks_the_unchanged_target_first(photos, inception_weights, tmp_path, capsys):
    argv = ["evaluate", "--model", "target", "--model", "paste", "--sources", str(photos / "sources"),
            "--targets", str(photos / "targets"), "--inception", str(inception_weights), "--out", str(tmp_path / "eval")]
    assert distilswap.main(argv) == 0
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    target, paste = report["models"]["target"]["fid"], report["models"]["paste"]["fid"]
    assert 0 <= target < 1e-3 * paste, (target, paste)  # the same crops as the reference: FID 0
    assert "against the 9 target faces" in report["fid"] and "| fid |" in (tmp_path / "eval" / "results.md").read_text()
    cache = tmp_path / "eval" / "cache"
    assert len(list(cache.rglob("*.inception.npy"))) == 18 + 3  # each pair's two swaps, each target face once
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*.inception.npy")}
    assert distilswap.main(argv) == 0  # resumed: no feature computed again, the same FIDs
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.inception.npy")} == stamps
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["models"] == report["models"]
    bad = tmp_path / "bad.pth"
    import torch

    torch.save({"conv.weight": torch.zeros(1)}, bad)
    assert distilswap.main(argv[:-4] + ["--inception", str(bad), "--out", str(tmp_path / "e2")]) == 2
    assert "not torchvision Inception-v3 weights" in capsys.readouterr().err and not (tmp_path / "e2").exists()


def test_frechet_distance_of_shifted_and_scaled_gaussians():
    from app.fid import frechet_distance

    a = np.random.default_rng(0).normal(size=(5000, 3))
    assert frechet_distance(a, a + [1.0, 2.0, 0.0]) == pytest.approx(5.0, rel=1e-9)  # equal covariances: ‖Δμ‖²
    # Σb = 4Σa: Tr(Σa + 4Σa − 2·2Σa) = Tr(Σa) ≈ 3
    assert frechet_distance(a, 2 * a) == pytest.approx(np.trace(np.cov(a, rowvar=False)) + (a.mean(0) ** 2).sum(), rel=1e-6)
