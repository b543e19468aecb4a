"""One-shot face swappers from other projects, as ONNX files: inputs `target` (RGB in [0,1], [B,3,S,S]) and
`source` (an identity vector [B,D]), output the swapped face in [0,1]. insightface's inswapper_128 has this
interface, with its identity vectors mapped by the file's last initializer (`emap`); SimSwap-style exports
take the ArcFace embedding as it is. The identity vector must come from the embedding space the swapper was
trained with (for inswapper: insightface's ArcFace, e.g. an insightface recognition .onnx as --embedder).
Used as a pairs teacher (teacher/pairs.py) and as a model of `distilswap swap` / `evaluate` (app/swap.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from facekit.errors import UserError
from facekit.onnx_runtime import ort_session


class OneShotOnnxSwapper:
    def __init__(self, path: str | Path, use_emap: bool = False):
        import onnx
        from onnx import numpy_helper

        path = Path(path)
        if not path.is_file():
            raise UserError(f"ONNX swapper {path} not found")
        try:
            model = onnx.load(str(path))
        except Exception as err:  # onnx raises its own decode errors
            raise UserError(f"{path}: not a loadable ONNX model ({str(err).splitlines()[0][:200]})") from None
        names = [i.name for i in model.graph.input if i.name not in {init.name for init in model.graph.initializer}]
        if sorted(names) != ["source", "target"]:
            raise UserError(f"{path}: a one-shot swapper needs inputs 'target' and 'source', found {names}")
        self.emap = numpy_helper.to_array(model.graph.initializer[-1]).astype(np.float32) if use_emap else None
        self.session = ort_session(model.SerializeToString(), "all", threads=0)  # 0: ORT picks (all cores)
        shape = next(i for i in self.session.get_inputs() if i.name == "target").shape
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
        """target [B,3,S,S] float32 in [0,1] at the swapper's size, latent [B,D] -> swapped [B,3,S,S]."""
        rows = [slice(None)] if self.batched else [slice(i, i + 1) for i in range(len(target))]
        latent = np.broadcast_to(latent, (len(target), latent.shape[-1]))
        return np.concatenate([self.session.run(None, {"target": np.ascontiguousarray(target[r], dtype=np.float32),
                                                       "source": np.ascontiguousarray(latent[r], dtype=np.float32)})[0]
                               for r in rows])
