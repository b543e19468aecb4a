"""The one loader for the frozen face experts, whatever the file: every command that takes an identity
embedder, a face parser or a gaze model comes through here, so each accepts the same formats.

    embedder  a small-experts folder (`distilswap experts train`), ArcFace `.pdparams` (MobileFaceSwap),
              `.tar` / `.pth` / `.pt` (DiffFace / SimSwap), or an insightface recognition `.onnx`
    parser    a small-experts folder or BiSeNet `.pth` (DiffFace's FaceParser.pth)
    gaze      a small-experts folder or EyeNet `.pt` (DiffFace's GazeEstimator.pt)

A small-experts folder holds NAME.safetensors + NAME.json (class arguments, config, scores) per expert.
Nothing is unpickled unsafely: the format readers live in facekit/checkpoints.py. Every expert comes back
frozen.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from facekit.errors import UserError
from facekit.files import read_json
from facekit.experts.frozen import freeze

EXPERTS = ("embedder", "parser", "gaze")
RECORD_KEYS = ("class", "kwargs", "scores", "train_seconds", "parameters")  # of NAME.json, besides its config


def construct(expert: str, kwargs: dict[str, Any]) -> nn.Module:
    """An expert's network from the constructor arguments saved with it."""
    if expert == "embedder":
        from facekit.experts.arcface import IRSEArcFace

        return IRSEArcFace(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    if expert == "parser":
        from facekit.experts.bisenet import BiSeNet

        return BiSeNet(**kwargs)
    if expert == "gaze":
        from facekit.experts.eyenet import EyeNet

        return EyeNet(**kwargs)
    raise UserError(f"unknown expert {expert!r}; choose from {', '.join(EXPERTS)}")


def read_record(directory: str | Path, expert: str) -> dict[str, Any]:
    """NAME.json of a small-experts folder (its class, arguments, config and scores), or one line when damaged
    (a shipped one is restored, not retrained: a retrained file would not match models/manifest.json)."""
    from facekit.shipped import RESTORE, shipped_root

    path = Path(directory) / f"{expert}.json"
    remedy = RESTORE if shipped_root(path) else (
        f"delete it and {expert}.safetensors, then train it again (`distilswap experts train --world synthetic "
        f"--out {directory} --only {expert}` with your settings)")
    record = read_json(path, remedy)
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        raise UserError(f"{path}: damaged, no {', '.join(missing)}; {remedy}")
    return record


def load_trained(directory: str | Path, expert: str) -> nn.Module:
    """One expert of a small-experts folder (checked against models/manifest.json when it is a shipped one)."""
    from safetensors.torch import load_file

    from facekit.checkpoints import load_state_strict
    from facekit.shipped import check_shipped

    directory = Path(directory)
    meta, weights = directory / f"{expert}.json", directory / f"{expert}.safetensors"
    check_shipped(meta)
    check_shipped(weights)
    if not (meta.exists() and weights.exists()):
        raise UserError(f"no trained {expert} in {directory}: run `distilswap experts train --world synthetic --out {directory}`")
    model = construct(expert, read_record(directory, expert)["kwargs"])
    load_state_strict(model, load_file(str(weights)), weights)
    return freeze(model)


def load_embedder(path: str | Path) -> nn.Module:
    """D_I: (embedding [B,512] L2-normalised, feature map [B,512,7,7]) of RGB images in [0,1]."""
    path = _existing(path, "identity embedder (a small-experts folder, an ArcFace checkpoint or an ONNX file)")
    if path.is_dir():
        return load_trained(path, "embedder")
    if path.suffix.lower() == ".onnx":
        from facekit.experts.onnx_embedder import OnnxArcFace

        return freeze(OnnxArcFace(path))
    from facekit.checkpoints import load_arcface

    return load_arcface(path)


def load_parser(path: str | Path) -> nn.Module:
    """BiSeNet: RGB images in [0,1] -> 19-class face-parsing logits."""
    path = _existing(path, "face parser (a small-experts folder or FaceParser.pth)")
    if path.is_dir():
        return load_trained(path, "parser")
    from facekit.checkpoints import load_bisenet

    return load_bisenet(path)


def load_gaze(path: str | Path) -> nn.Module:
    """EyeNet: grey 96x160 eye crops -> (landmarks, (pitch, yaw))."""
    path = _existing(path, "gaze model (a small-experts folder or GazeEstimator.pt)")
    if path.is_dir():
        return load_trained(path, "gaze")
    from facekit.checkpoints import load_eyenet

    return load_eyenet(path)


def load_expert_set(directory: str | Path | None = None, embedder: str | Path | None = None,
                    parser: str | Path | None = None, gaze: str | Path | None = None
                    ) -> tuple[nn.Module, nn.Module | None, nn.Module | None]:
    """(embedder, parser, gaze): a small-experts folder's, each replaced by a file given for it. The embedder
    is required; a parser or gaze model neither trained into the folder nor given comes back as None."""
    found: dict[str, nn.Module | None] = dict.fromkeys(EXPERTS)
    if directory is not None:
        folder = Path(directory)
        if not folder.is_dir():
            raise UserError(f"experts directory {folder} not found: train them with `distilswap experts train`")
        found["embedder"] = load_trained(folder, "embedder")
        for expert in ("parser", "gaze"):
            if (folder / f"{expert}.json").exists():
                found[expert] = load_trained(folder, expert)
    for expert, path, load in (("embedder", embedder, load_embedder), ("parser", parser, load_parser),
                               ("gaze", gaze, load_gaze)):
        if path is not None:
            found[expert] = load(path)
    if found["embedder"] is None:
        raise UserError("an identity embedder is needed: pass --experts DIR or --arcface FILE (Arcface.tar, "
                        "arcface.pdparams or an insightface .onnx)")
    return found["embedder"], found["parser"], found["gaze"]


def _existing(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such {what}")
    return path
