"""One-shot face swappers from other projects, as ONNX files: two inputs, the target face crop ([B,3,S,S]) and
an identity vector ([B,D]), whatever their names (`target`/`source` in insightface's and FaceFusion's files);
output the swapped crop. insightface's inswapper_128 takes RGB in [0,1] and an identity vector mapped by the
file's last initializer (`emap`); SimSwap-style exports take the ArcFace embedding as it is and, as FaceFusion
runs them, an ImageNet-normalised crop (`pixels="imagenet"`); GHOST-style ones work in [−1,1] (`"signed"`).
The identity vector must come from the embedding space the swapper was trained with (for inswapper:
insightface's ArcFace, e.g. an insightface recognition .onnx as --embedder).
Used as a pairs teacher (teacher/pairs.py) and as a model of `distilswap swap` / `evaluate` (app/swap.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from facekit.errors import UserError
from facekit.onnx_runtime import load_session


PIXELS = ("unit", "imagenet", "signed")  # what the crop input holds: [0,1]; ImageNet-normalised; [−1,1] (out too)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def one_shot_inputs(session) -> tuple[str, str] | None:
    """(crop input, identity input) of an ORT session with exactly one rank-4 and one rank-2 input, else None
    (our own exports have one input, or the target and eighteen identity weights)."""
    inputs = session.get_inputs()
    ranks = {len(i.shape): i.name for i in inputs}
    if len(inputs) != 2 or set(ranks) != {2, 4}:
        return None
    return ranks[4], ranks[2]


class OneShotOnnxSwapper:
    def __init__(self, path: str | Path, use_emap: bool = False, pixels: str = "unit", threads: int = 0,
                 session=None):
        """`session`: one already made for `path` (the app opens the file once to see what it is)."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"ONNX swapper {path} not found")
        if pixels not in PIXELS:
            raise UserError(f"--onnx-pixels {pixels}: not one of {', '.join(PIXELS)}")
        self.session = session or load_session(path, "all", threads)
        names = one_shot_inputs(self.session)
        if names is None:
            found = [f"{i.name} (rank {len(i.shape)})" for i in self.session.get_inputs()]
            raise UserError(f"{path}: a one-shot swapper needs two inputs, a [B,3,S,S] face crop and a [B,D] identity "
                            f"vector; found {', '.join(found)}")
        self.image_input, self.vector_input = names
        self.pixels = pixels
        self.emap = _last_initializer(path) if use_emap else None
        shape = next(i for i in self.session.get_inputs() if i.name == self.image_input).shape
        self.size = shape[-1] if isinstance(shape[-1], int) else None
        self.batched = not isinstance(shape[0], int) or shape[0] != 1
        self.path = path

    def latent(self, embedding: np.ndarray) -> np.ndarray:
        """The swapper's identity input from embeddings [B,D] (mapped by emap and re-normalised when used)."""
        embedding = np.asarray(embedding, dtype=np.float32).reshape(len(embedding), -1)
        if self.emap is None:
            return embedding
        mapped = embedding @ self.emap
        return mapped / np.maximum(np.linalg.norm(mapped, axis=1, keepdims=True), 1e-8)

    def __call__(self, target: np.ndarray, latent: np.ndarray) -> np.ndarray:
        """target [B,3,S,S] float32 in [0,1] at the swapper's size, latent [B,D] -> swapped [B,3,S,S] in [0,1]."""
        rows = [slice(None)] if self.batched else [slice(i, i + 1) for i in range(len(target))]
        latent = np.broadcast_to(latent, (len(target), latent.shape[-1]))
        crops = np.asarray(target, dtype=np.float32)
        if self.pixels == "imagenet":
            crops = (crops - IMAGENET_MEAN) / IMAGENET_STD
        elif self.pixels == "signed":
            crops = crops * 2 - 1
        out = np.concatenate([self.session.run(None, {self.image_input: np.ascontiguousarray(crops[r]),
                                                      self.vector_input: np.ascontiguousarray(latent[r], dtype=np.float32)})[0]
                              for r in rows])
        return (out + 1) / 2 if self.pixels == "signed" else out


def _last_initializer(path: Path) -> np.ndarray:
    """insightface's `emap`: the file's last initializer."""
    import onnx
    from onnx import numpy_helper

    return numpy_helper.to_array(onnx.load(str(path)).graph.initializer[-1]).astype(np.float32)
