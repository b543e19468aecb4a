"""The source identity of an export: an identity file (embedding + feature map) or a face image.

Our identity file format is an `.npz` or `.safetensors` holding `embedding` ([512] or [1,512]) and
`feature_map` ([512,7,7] or [1,512,7,7]), the two outputs of the identity embedder D_I.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from facekit.errors import UserError

IDENTITY_SUFFIXES = (".npz", ".safetensors")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAP_SIZE = 7


def load_identity(path: str | Path, dim: int = 512) -> tuple[str, torch.Tensor, torch.Tensor]:
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
    np.savez(path, embedding=embedding.detach().cpu().numpy().reshape(-1), feature_map=feature_map.detach().cpu().numpy().reshape(-1, MAP_SIZE, MAP_SIZE))
    return path


def resolve_source(
    source: str | Path, dim: int = 512, embedder: str | Path | None = None, detector_models: str | Path | None = None
) -> tuple[str, torch.Tensor, torch.Tensor]:
    """An identity file is read as is; a face image is detected, aligned and embedded (needs `embedder`)."""
    source = Path(source)
    suffix = source.suffix.lower()
    if suffix in IDENTITY_SUFFIXES:
        return load_identity(source, dim)
    if suffix in IMAGE_SUFFIXES:
        return identity_from_face(source, embedder, detector_models)
    raise UserError(
        f"{source}: unknown source type {suffix or '(no suffix)'}; pass an identity file "
        f"({', '.join(IDENTITY_SUFFIXES)}) or a face image ({', '.join(IMAGE_SUFFIXES)}) with --embedder"
    )


def identity_from_face(
    image_path: str | Path, embedder: str | Path | None, detector_models: str | Path | None = None
) -> tuple[str, torch.Tensor, torch.Tensor]:
    """Largest face -> ArcFace-aligned 112² crop -> (embedding, feature map) of the IR-SE ArcFace at `embedder`."""
    from facekit.align import align_faces
    from facekit.checkpoints import load_arcface
    from facekit.detect import make_detector
    from facekit.imageio import read_image

    image_path = Path(image_path)
    if embedder is None:
        raise UserError(f"{image_path}: a face image needs --embedder ARCFACE_CHECKPOINT (or pass an identity .npz)")
    if not image_path.is_file():
        raise UserError(f"{image_path}: no such image")
    image = read_image(image_path)
    faces = make_detector(detector_models).detect(image)
    if not faces:
        raise UserError(f"{image_path}: no face found; use a clear, frontal photo of the source person")
    crop, _ = align_faces(image, faces, 112, index=0)[0]
    network = load_arcface(embedder).eval()
    with torch.no_grad():
        embedding, feature_map = network(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float() / 255.0)
    return image_path.stem, embedding.reshape(1, -1).float(), feature_map.float()


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
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
