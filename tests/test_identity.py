"""Export sources: identity files (npz/safetensors) and face images through detect -> align -> ArcFace."""
import numpy as np
import pytest
import torch

from facekit.identity import load_identity, resolve_identity, save_identity
from facekit.errors import UserError


def test_identity_files_in_both_layouts(tmp_path):
    embedding, feature_map = torch.randn(1, 512), torch.randn(1, 512, 7, 7)
    save_identity(tmp_path / "alice.npz", embedding, feature_map)
    from safetensors.numpy import save_file

    save_file({"embedding": embedding.numpy(), "feature_map": feature_map.numpy()}, str(tmp_path / "bob.safetensors"))
    for path, name in ((tmp_path / "alice.npz", "alice"), (tmp_path / "bob.safetensors", "bob")):
        got_name, got_embedding, got_map = load_identity(path)
        assert got_name == name and got_embedding.shape == (1, 512) and got_map.shape == (1, 512, 7, 7)
        assert torch.equal(got_embedding, embedding) and torch.equal(got_map, feature_map)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"embedding": np.zeros(512, np.float32)}, "missing feature_map"),
        ({"embedding": np.zeros(256, np.float32), "feature_map": np.zeros((512, 7, 7), np.float32)}, "256 values"),
        ({"embedding": np.zeros(512, np.float32), "feature_map": np.zeros((512, 8, 8), np.float32)}, "must be [512,7,7]"),
    ],
)
def test_bad_identity_files_are_user_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "x.npz", **arrays)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_identity(tmp_path / "x.npz")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match=r"not a readable identity file \(not an \.npz archive\)"):
        load_identity(tmp_path / "broken.npz")


class _FakeDetector:
    def __init__(self, faces):
        self.faces = faces

    def detect(self, image):
        return self.faces


def _face_image(tmp_path):
    from facekit.faces.imageio import write_image

    yy, xx = np.mgrid[0:160, 0:160] / 160.0
    image = (np.stack([xx, yy, 1 - xx * yy], -1) * 255).astype(np.uint8)
    return write_image(tmp_path / "carol.png", image), image


def test_face_image_source_is_detected_aligned_and_embedded(tmp_path, monkeypatch):
    import facekit.checkpoints
    import facekit.faces.detect
    from facekit.faces.align import align_faces, template_points
    from facekit.experts.arcface import IRSEArcFace
    from facekit.faces.detect import Face

    path, image = _face_image(tmp_path)
    landmarks = template_points(112) + 20.0  # a face sitting in the image
    face = Face(np.array([10, 10, 150, 150], np.float32), 0.9, landmarks.astype(np.float32))
    torch.manual_seed(0)
    arcface = IRSEArcFace(blocks=(1, 1, 1, 1), widths=(8, 16, 32, 512)).eval()
    monkeypatch.setattr(facekit.faces.detect, "make_detector", lambda models=None: _FakeDetector([face]))
    monkeypatch.setattr(facekit.checkpoints, "load_arcface", lambda path: arcface)
    (tmp_path / "arcface.pth").touch()
    name, embedding, feature_map = resolve_identity(path, embedder=tmp_path / "arcface.pth")
    crop, _ = align_faces(image, [face], 224, mode="affine", index=0)[0]  # MobileFaceSwap's source crop
    with torch.no_grad():
        expected_embedding, expected_map = arcface(torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255)
    assert name == "carol" and feature_map.shape == (1, 512, 7, 7)
    assert torch.allclose(embedding, expected_embedding) and torch.allclose(feature_map, expected_map)


def test_face_image_without_face_or_embedder_is_user_error(tmp_path, monkeypatch):
    import facekit.faces.detect

    path, _ = _face_image(tmp_path)
    with pytest.raises(UserError, match="--embedder"):
        resolve_identity(path)
    monkeypatch.setattr(facekit.faces.detect, "make_detector", lambda models=None: _FakeDetector([]))
    (tmp_path / "arcface.pth").touch()
    with pytest.raises(UserError, match="no face found"):
        resolve_identity(path, embedder=tmp_path / "arcface.pth")
