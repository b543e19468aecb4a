"""The student's own checkpoint file: safetensors (no pickle) with the architecture in its metadata."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch

from facekit.checkpoints import load_state_strict
from facekit.errors import UserError
from facekit.files import atomic_write
from student.config import StudentConfig
from student.model import MobileFaceSwap

FORMAT = "distilswap-student/1"


def save_student(model: MobileFaceSwap, path: str | Path, extra: Mapping[str, str] | None = None) -> Path:
    """Write atomically: a failed save never replaces an existing good file."""
    from safetensors.torch import save_file

    path = Path(path)
    metadata = {"format": FORMAT, "config": json.dumps(model.config.to_dict()), **(extra or {})}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda temp: save_file(state, str(temp), metadata=metadata))
    return path


def read_student_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for truncated/foreign files
        raise UserError(f"{path}: not a readable safetensors file ({err})") from None
    if metadata.get("format") != FORMAT:
        raise UserError(
            f"{path}: not a DistilSwap student checkpoint (format {metadata.get('format')!r}); "
            "official MobileFaceSwap weights go through `distilswap student import` first"
        )
    return metadata


def load_student(path: str | Path, map_location: str | torch.device = "cpu") -> MobileFaceSwap:
    from safetensors.torch import load_file

    metadata = read_student_metadata(path)
    config = StudentConfig.from_dict(json.loads(metadata["config"]))
    model = MobileFaceSwap(config)
    try:
        state = load_file(str(path), device=str(map_location))
    except Exception as err:
        raise UserError(f"{path}: cannot read tensors ({err})") from None
    load_state_strict(model, state, str(path))
    return model.eval()


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    return path
