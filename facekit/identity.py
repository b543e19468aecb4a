"""A source identity: an identity file as is, or a face photo through detection, alignment and D_I.

Export (`--source`) and swap both come here, so an identity is computed the same way everywhere: the
largest face (or a chosen one), aligned like MobileFaceSwap's sources (ArcFace template ×2 at 224²,
least-squares affine), through the identity embedder, which resizes and normalises for itself.

Identity files are `.npz` or `.safetensors` holding `embedding` ([512] or [1,512]) and `feature_map`
([512,7,7] or [1,512,7,7]), the two outputs of D_I.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facekit.errors import UserError
from facekit.experts.expert_loader import load_embedder

SOURCE_CROP = 224
IDENTITY_SUFFIXES = (".npz", ".safetensors")
MAP_SIZE = 7

Identity = tuple[str, torch.Tensor, torch.Tensor]  # (name, embedding [1,D], feature map [1,D,7,7])


def resolve_identity(
    source: str | Path,
    embedder: str | Path | None = None,
    detector_models: str | Path | None = None,
    detector=None,
    dim: int = 512,
) -> Identity:
    """An identity file (read as is) or a face photo (needs `embedder`); the name is the file's stem."""
    from facekit.faces.imageio import IMAGE_SUFFIXES, read_image

    source = Path(source)
    suffix = source.suffix.lower()
    if suffix in IDENTITY_SUFFIXES:
        return load_identity(source, dim)
    if suffix not in IMAGE_SUFFIXES:
        raise UserError(
            f"{source}: unknown source type {suffix or '(no suffix)'}; pass an identity file "
            f"({', '.join(IDENTITY_SUFFIXES)}) or a face photo ({', '.join(IMAGE_SUFFIXES)}) with --embedder"
        )
    if embedder is None:
        raise UserError(f"{source}: a face photo needs --embedder (small-experts folder or ArcFace checkpoint), or pass an identity .npz")
    if not source.is_file():
        raise UserError(f"{source}: no such image")
    if detector is None:
        from facekit.faces.detect import make_detector

        detector = make_detector(detector_models)
    embedding, feature_map = identity_from_image(read_image(source), detector, embedder)
    return source.stem, embedding, feature_map


@torch.no_grad()
def identity_from_image(
    image: np.ndarray, detector, embedder: nn.Module | str | Path, face_index: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding [1,512] L2-normalised, feature map [1,512,7,7]) of one face in an RGB uint8 image.
    An embedder given as a path is loaded only once a face was found."""
    from facekit.faces.align import align_faces

    faces = detector.detect(image)
    if not faces:
        raise UserError("no face found in the source photo; use a clear, frontal photo of the source person")
    (crop, _), = align_faces(image, faces, SOURCE_CROP, mode="affine", index=face_index)
    if not isinstance(embedder, nn.Module):
        embedder = load_embedder(embedder)
    tensor = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float().div(255.0)
    embedding, feature_map = embedder.eval()(tensor)
    if feature_map is None:
        raise UserError(
            f"the embedder ({getattr(embedder, 'embedding_space', 'unknown')}) gives no 512x7x7 identity map; "
            "the student needs the IR-SE ArcFace it was trained with"
        )
    return embedding.reshape(1, -1).float(), feature_map.float()


def load_identity(path: str | Path, dim: int = 512) -> Identity:
    """-> (name = file stem, embedding [1,dim], feature_map [1,dim,7,7]) as float32."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such identity file")
    arrays = _read_arrays(path)
    missing = [key for key in ("embedding", "feature_map") if key not in arrays]
    if missing:
        raise UserError(
            f"{path}: missing {', '.join(missing)} (an identity file holds `embedding` [{dim}] and "
            f"`feature_map` [{dim},7,7]; found: {', '.join(sorted(arrays)) or 'nothing'})"
        )
    embedding = torch.as_tensor(np.asarray(arrays["embedding"], dtype=np.float32)).reshape(1, -1)
    feature_map = torch.as_tensor(np.asarray(arrays["feature_map"], dtype=np.float32))
    if embedding.shape[1] != dim:
        raise UserError(f"{path}: embedding has {embedding.shape[1]} values, the student expects {dim}")
    if feature_map.dim() == 3:
        feature_map = feature_map[None]
    if tuple(feature_map.shape) != (1, dim, MAP_SIZE, MAP_SIZE):
        raise UserError(f"{path}: feature_map must be [{dim},7,7], got {list(feature_map.shape)}")
    return path.stem, embedding, feature_map


def save_identity(path: str | Path, embedding: torch.Tensor, feature_map: torch.Tensor) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, embedding=embedding.detach().cpu().numpy().reshape(-1), feature_map=feature_map.detach().cpu().numpy().reshape(-1, MAP_SIZE, MAP_SIZE))
    return path


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if path.suffix.lower() == ".npz" and path.is_file() and not zipfile.is_zipfile(path):
        # np.load would take it for a pickle and suggest loading it unsafely
        raise UserError(f"{path}: not a readable identity file (not an .npz archive)")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.numpy import load_file

            return dict(load_file(str(path)))
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
    except Exception as err:  # truncated or foreign files raise library-specific errors
        raise UserError(f"{path}: not a readable identity file ({type(err).__name__}: {err})") from None
    raise UserError(f"{path}: identity files are .npz or .safetensors")
