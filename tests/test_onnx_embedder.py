import warnings

import numpy as np
import pytest
import torch
from torch import nn

from facekit.experts.arcface import IRSEArcFace
from facekit.errors import UserError
from facekit.experts.onnx_embedder import OnnxArcFace, check_same_space


class TinyEmbedder(nn.Module):
    """The op set of insightface's iresnet exports (Conv, BatchNorm, PReLU, Flatten, Gemm) at opset 11."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, 4, 1), nn.BatchNorm2d(8), nn.PReLU(8), nn.Conv2d(8, 8, 3, 4, 1), nn.BatchNorm2d(8)
        )
        self.fc = nn.Linear(8 * 7 * 7, 16)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyEmbedder().eval()
    with torch.no_grad():
        model.body[1].running_mean.uniform_(-0.2, 0.2)
    path = tmp_path_factory.mktemp("onnx") / "w600k_tiny.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter writes opset 11 like insightface's files
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.rand(1, 3, 112, 112),), str(path), input_names=["input.1"], dynamo=False, opset_version=11)
    return path


def test_matches_insightface_on_a_bgr_photo(onnx_path):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    reference = ArcFaceONNX(model_file=str(onnx_path))
    rgb = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    expected = reference.get_feat(rgb[:, :, ::-1].copy())[0]
    embedder = OnnxArcFace(onnx_path)
    embedding, feature_map = embedder(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)
    assert feature_map is None and embedder.embedding_space == "insightface:w600k_tiny"
    assert np.allclose(embedding[0].detach().numpy(), expected / np.linalg.norm(expected), atol=1e-5)


def test_differentiable_frozen_and_resizes(onnx_path):
    embedder = OnnxArcFace(onnx_path)
    nn.Sequential(embedder).train()
    assert not embedder.training and not any(p.requires_grad for p in embedder.parameters())
    images = torch.rand(2, 3, 160, 160, requires_grad=True)
    embedding, _ = embedder(images)
    assert embedding.shape == (2, 16)
    embedding.sum().backward()
    assert images.grad.abs().sum() > 0


def test_spaces_cannot_be_mixed(onnx_path, tmp_path):
    irse = IRSEArcFace(blocks=(1, 1, 1, 1), widths=(8, 8, 8, 8))
    check_same_space(irse, "irse-arcface")
    with pytest.raises(UserError, match="insightface:w600k_tiny.*irse-arcface"):
        check_same_space(OnnxArcFace(onnx_path), irse)
    (tmp_path / "bad.onnx").write_bytes(b"nope")
    with pytest.raises(UserError, match="bad.onnx"):
        OnnxArcFace(tmp_path / "bad.onnx")


def test_every_embedder_option_takes_an_onnx_file_through_the_one_loader(onnx_path):
    """--arcface, --judge, --embedder all go through facekit.experts.expert_loader: an insightface .onnx works for each."""
    from facekit.experts.expert_loader import load_embedder, load_expert_set
    from facekit.experts.frozen import is_frozen

    embedder, parser, gaze = load_expert_set(embedder=onnx_path)
    assert isinstance(embedder, OnnxArcFace) and parser is None and gaze is None and is_frozen(embedder)
    assert isinstance(load_embedder(onnx_path), OnnxArcFace)
    with pytest.raises(UserError, match="no such identity embedder"):
        load_embedder(onnx_path.with_name("missing.onnx"))
