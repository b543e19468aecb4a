"""Swapping faces in photos and videos with a student: detect, align, swap, paste back.

The swap itself runs in PyTorch (a student checkpoint, the identity baked in; for a video or OpenVINO, that
baked network exported first) or on an exported swapper in ONNX Runtime (what ships to a phone, checked on a
desktop on the same photos) or OpenVINO (the faster desktop engine on x86).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from app.clock import StageClock
from export import layout
from facekit.onnx_runtime import load_session, ort_session
from facekit.errors import UserError
from facekit.faces.smoothing import OneEuroFilter

IdentityTensors = tuple[torch.Tensor, torch.Tensor]  # (embedding [1,D], feature map [1,D,7,7])
# MobileFaceSwap fits its 224² crops with a full least-squares affine to the ArcFace template ×2.
ALIGN_MODE = "affine"


class CropSwapper(Protocol):
    """Aligned target crops [N,S,S,3] uint8 -> (swapped crops [N,S,S,3] float in [0,1], masks [N,S,S])."""

    size: int

    def __call__(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def _to_unit_nchw(crops: np.ndarray) -> np.ndarray:
    """uint8 [N,S,S,3] -> float32 [N,3,S,S] in [0,1]. In numpy, not torch: a torch op here wakes torch's OpenMP
    workers, which then spin on the core a video's decoder and encoder need (4 ms of CPU a frame at 480p)."""
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def _to_numpy(images: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images, masks = np.asarray(images), np.asarray(masks)
    return images.transpose(0, 2, 3, 1).clip(0, 1), masks[:, 0]


class TorchSwapper:
    """A student checkpoint with one identity baked in (a plain static network)."""

    def __init__(self, checkpoint: str | Path, identity: IdentityTensors):
        from student.checkpoint import load_student

        model = load_student(checkpoint)
        self.size = model.config.resolution
        self.net = model.bake(*identity)

    @torch.no_grad()
    def __call__(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images, masks = self.net(torch.from_numpy(_to_unit_nchw(crops)))
        return _to_numpy(images.numpy(), masks.numpy())


class OnnxSwapper:
    """An exported swapper in ONNX Runtime: a baked file (identity inside), or the dynamic graph fed with
    the identity weights an injector produced."""

    def __init__(self, path: str | Path, identity_weights: dict[str, np.ndarray] | None = None, threads: int = 0,
                 session=None):
        self.session = session or load_session(path, "all", threads)
        inputs = self.session.get_inputs()
        self.image_input = inputs[0].name
        self.size = int(inputs[0].shape[-1]) if isinstance(inputs[0].shape[-1], int) else 224
        needed = [i.name for i in inputs[1:]]
        self.feeds = {}
        if needed:
            if identity_weights is None:
                raise UserError(f"{path}: this is the dynamic swapper; it needs identity weights (pass --source)")
            missing = [n for n in needed if n not in identity_weights]
            if missing:
                raise UserError(f"{path}: identity weights lack {', '.join(missing[:3])}")
            self.feeds = {n: np.ascontiguousarray(identity_weights[n], dtype=np.float32) for n in needed}

    def __call__(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images, masks = [], []
        for crop in _to_unit_nchw(crops):  # phone graphs are batch 1
            image, mask = self.session.run(None, {self.image_input: crop[None], **self.feeds})[:2]
            images.append(image)
            masks.append(mask)
        return _to_numpy(np.concatenate(images), np.concatenate(masks))


class ExternalSwapper:
    """A one-shot ONNX swapper of another project (facekit.onnx_swapper, e.g. inswapper_128) with one source
    identity: crops aligned by a similarity to the ArcFace template at its size, as insightface aligns them."""

    align_mode = "similarity"

    def __init__(self, path: str | Path, embedding: torch.Tensor, use_emap: bool = False, pixels: str = "unit",
                 session=None):
        from facekit.onnx_swapper import OneShotOnnxSwapper

        self.model = OneShotOnnxSwapper(path, use_emap, pixels, session=session)
        self.size = self.model.size or 128
        self.latent = self.model.latent(embedding.detach().cpu().numpy())

    def __call__(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.model(_to_unit_nchw(crops), self.latent)
        return out.transpose(0, 2, 3, 1).clip(0, 1), np.ones((len(crops), self.size, self.size), np.float32)


@dataclass
class Prepared:
    """A frame with its aligned face crops, between tracking and swapping."""

    frame: np.ndarray
    transforms: list[np.ndarray]
    crops: list[np.ndarray]


@dataclass
class FaceSwapRun:
    """Swaps every selected face of each frame; keeps per-face landmark filters for videos. The detector is a
    `FaceDetector.detect` for photos, a `FaceTracker` for videos. `prepare` (find and align the faces) and
    `finish` (swap and paste back) are separate so a video can run them in different threads."""

    detector: Callable[[np.ndarray], Sequence]
    swapper: CropSwapper
    face_index: int | None = None  # None: all faces, largest first
    smooth_rate: float | None = None  # frames per second for the One-Euro filter; None: no smoothing
    clock: StageClock = field(default_factory=StageClock)
    found: int = field(default=0, init=False)  # faces detected in the last frame, before --face-index chose one
    _filters: dict[int, OneEuroFilter] = field(default_factory=dict)

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, int]:
        prepared = self.prepare(frame)
        return self.finish(prepared), len(prepared.crops)

    def prepare(self, frame: np.ndarray) -> Prepared:
        from facekit.faces.align import estimate_transform, warp_face

        with self.clock.stage("detect/track"):
            faces = self.detector(frame)  # largest first: the FaceDetector contract
        self.found = len(faces)
        if self.face_index is not None:
            faces = [faces[self.face_index]] if self.face_index < len(faces) else []
        prepared = Prepared(frame, [], [])
        with self.clock.stage("align"):
            # One filter per tracked face (untracked faces: per place in the list); a face that is gone takes
            # its history with it, so another face never inherits it.
            keys = [-1 - slot if face.track is None else face.track for slot, face in enumerate(faces)]
            if self.smooth_rate:
                self._filters = {key: self._filters[key] if key in self._filters else OneEuroFilter(self.smooth_rate)
                                 for key in keys}
            for key, face in zip(keys, faces):
                landmarks = np.asarray(face.landmarks5, dtype=np.float64)
                if self.smooth_rate:
                    landmarks = self._filters[key](landmarks)
                matrix = estimate_transform(landmarks, self.swapper.size, mode=getattr(self.swapper, "align_mode", ALIGN_MODE))
                prepared.transforms.append(matrix)
                prepared.crops.append(warp_face(frame, matrix, self.swapper.size))
        return prepared

    def finish(self, prepared: Prepared) -> np.ndarray:
        from facekit.faces.align import paste_back

        if not prepared.crops:
            return prepared.frame
        with self.clock.stage("swap"):
            swapped, masks = self.swapper(np.stack(prepared.crops))
        out = prepared.frame
        with self.clock.stage("paste"):
            for matrix, face_img, mask in zip(prepared.transforms, swapped, masks):
                out = paste_back(out, (face_img * 255).round().astype(np.uint8), matrix, mask)
        return out


def open_swapper(model: str | Path, identity: IdentityTensors | None, threads: int = 0, use_emap: bool = False,
                 pixels: str = "unit", engine: str = "onnxruntime", as_onnx: bool = False) -> CropSwapper:
    """A student checkpoint (`.safetensors`), an exported swapper (`.onnx`), an export folder, or another
    project's one-shot ONNX swapper (a crop and an identity vector; `use_emap` for inswapper's emap, `pixels`
    for what its crop input holds: facekit.onnx_swapper); `engine` runs an .onnx (facekit.onnx_runtime.ENGINES)
    on `threads` (0: one per core; a video pipeline wants 1, its other threads fill the other cores). A checkpoint
    runs in PyTorch unless `as_onnx` or another engine asks for it baked and exported first (`_baked_swapper`)."""
    model = Path(model)
    if model.is_dir():
        model = model / layout.DYNAMIC
    if not model.is_file():
        raise UserError(f"{model}: no such model (a student .safetensors, an exported .onnx, or an export folder)")
    if model.suffix == ".safetensors":
        if identity is None:
            raise UserError("a student checkpoint needs --source (the face or identity file to swap in)")
        if as_onnx or engine != "onnxruntime":
            return _baked_swapper(model, identity, threads, engine)
        return TorchSwapper(model, identity)
    if model.suffix == ".onnx":
        from facekit.onnx_swapper import one_shot_inputs

        session = load_session(model, "all", threads, engine)  # opened once: its inputs say what kind of swapper it is
        if one_shot_inputs(session) is not None:
            if identity is None:
                raise UserError(f"{model} is a one-shot swapper: it needs --source (a face photo and --embedder)")
            return ExternalSwapper(model, identity[0], use_emap, pixels, session)
        return OnnxSwapper(model, _injected_weights(model.parent / layout.INJECTOR, identity), session=session)
    raise UserError(f"{model}: unknown model type {model.suffix!r} (.safetensors, .onnx or an export folder)")


def _baked_swapper(checkpoint: Path, identity: IdentityTensors, threads: int, engine: str) -> OnnxSwapper:
    """A checkpoint baked with the identity and exported as `distilswap export` would, then opened on `engine`: a
    video's many frames repay the export's few seconds, and the engine, unlike PyTorch's OpenMP workers, leaves the
    other core to the pipeline's tracking and encoding threads."""
    from export.onnx_export import export_baked
    from student.checkpoint import load_student

    with tempfile.TemporaryDirectory() as folder:
        path = export_baked(load_student(checkpoint).bake(*identity), Path(folder) / layout.baked("source"), {})
        return OnnxSwapper(path, session=load_session(path, "all", threads, engine))


def _injected_weights(injector: Path, identity: IdentityTensors | None) -> dict[str, np.ndarray] | None:
    """Identity weights from the exported injector next to a dynamic swapper (None when not applicable)."""
    if identity is None or not injector.is_file():
        return None
    session = ort_session(injector, "all")
    embedding, feature_map = (t.numpy().astype(np.float32) for t in identity)
    names = [i.name for i in session.get_inputs()]
    outputs = session.run(None, dict(zip(names, (embedding, feature_map))))
    return {o.name: value for o, value in zip(session.get_outputs(), outputs)}


def side_by_side(*images: np.ndarray) -> np.ndarray:
    """source | target | result at the result's height (for --compare)."""
    import cv2

    height = images[-1].shape[0]
    resized = [cv2.resize(im, (max(1, round(im.shape[1] * height / im.shape[0])), height)) for im in images]
    return np.concatenate(resized, axis=1)
