"""insightface ArcFace ONNX models (e.g. `w600k_r50.onnx`) as differentiable torch embedders, via onnx2torch.

These are other networks than the IR-SE ArcFace the teacher and student are conditioned on: their embeddings
live in another space. Each embedder carries `embedding_space`; `check_same_space` stops a guidance or
evaluation from comparing vectors of two spaces.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from facekit.experts.arcface import resize_to
from facekit.errors import UserError
from facekit.experts.frozen import freeze


def _insightface_normalisation(graph: Any) -> tuple[float, float]:
    """insightface's rule: models converted from MXNet normalise inside the graph (a Sub and a Mul among the
    first nodes) and take raw 0..255 pixels; the others take (x - 127.5) / 127.5."""
    names = [node.name for node in graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


class OnnxArcFace(nn.Module):
    """forward: RGB [0,1] Bx3xHxW -> (L2-normalised embedding [B,D], None); the input is resized to the
    model's square input and scaled as insightface does (its BGR images are swapped to RGB before the net)."""

    def __init__(self, path: str | Path):
        super().__init__()
        import onnx
        from onnx2torch import convert

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such ONNX file")
        try:
            model = onnx.load(str(path))
        except Exception as err:  # protobuf errors have no common base class
            raise UserError(f"{path}: not a readable ONNX model ({err.__class__.__name__})") from None
        dims = model.graph.input[0].type.tensor_type.shape.dim
        sizes = [d.dim_value for d in dims[2:4]]
        if len(dims) != 4 or (sizes[0] and sizes[1] and sizes[0] != sizes[1]):
            raise UserError(f"{path}: expected a face embedder with a square N x 3 x S x S input")
        self.input_size = sizes[0] or 112
        self.input_mean, self.input_std = _insightface_normalisation(model.graph)
        try:
            self.net = freeze(convert(model))
        except Exception as err:
            raise UserError(f"{path}: onnx2torch cannot convert this model ({err})") from None
        self.embedding_space = f"insightface:{path.stem}"

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        x = resize_to(images, self.input_size) * 255.0
        embedding = self.net((x - self.input_mean) / self.input_std)
        return F.normalize(embedding.flatten(1), dim=1), None

    def train(self, mode: bool = True) -> "OnnxArcFace":
        return super().train(False)  # converted graphs hold BatchNorm: keep them in inference mode


def embedding_space(obj: Any) -> str:
    return obj if isinstance(obj, str) else getattr(obj, "embedding_space", "unknown")


def check_same_space(a: Any, b: Any) -> None:
    """UserError when two embedders (or space names) produce incomparable embeddings."""
    space_a, space_b = embedding_space(a), embedding_space(b)
    if space_a != space_b:
        raise UserError(
            f"identity embeddings from different spaces: '{space_a}' vs '{space_b}'; the teacher and student "
            "must be conditioned on, and compared with, the same identity embedder"
        )
