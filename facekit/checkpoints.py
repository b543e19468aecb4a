"""Loading the official expert checkpoints into our networks, never executing pickled code.

- ArcFace: MobileFaceSwap's `arcface.pdparams` (Paddle names) or SimSwap/DiffFace's `Arcface.tar` (a pickled
  whole model, read through `facekit.torch_pickle`), or a plain torch state dict.
- BiSeNet `FaceParser.pth` (state dict) and EyeNet `GazeEstimator.pt` (dict with `model_state_dict`) through
  `torch.load(weights_only=True)`.
Every mismatch with the architecture is reported with the first differences, so a wrong file fails clearly.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from facekit.experts.arcface import IRSEArcFace
from facekit.experts.bisenet import BiSeNet
from facekit.errors import UserError
from facekit.experts.eyenet import EyeNet
from facekit.experts.frozen import freeze
from facekit.safe_pickle import load_pdparams
from facekit.torch_pickle import ModulePlaceholder, load_torch_pickle, placeholder_state_dict

_MAX_LISTED = 5


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> nn.Module:
    """load_state_dict that explains a wrong checkpoint: missing, unexpected and mis-shaped names.

    `num_batches_tracked` may be absent (Paddle has none; it does not affect eval-mode outputs)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("shape mismatch (file vs model)", shapes)):
            if names:
                more = f" (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
                parts.append(f"{label}: {', '.join(names[:_MAX_LISTED])}{more}")
        raise UserError(
            f"{source}: not a checkpoint for {type(model).__name__} with this configuration; " + "; ".join(parts)
        )
    merged = {k: state[k].to(own[k].dtype) if k in state else own[k] for k in own}
    model.load_state_dict(merged)
    return model


def paddle_name_to_torch(name: str) -> str:
    """Paddle BatchNorm `_mean`/`_variance` and PReLU `_weight` -> torch's names (everything else is equal)."""
    head, _, last = name.rpartition(".")
    last = {"_mean": "running_mean", "_variance": "running_var", "_weight": "weight"}.get(last, last)
    return f"{head}.{last}" if head else last


def paddle_to_torch(params: Mapping[str, np.ndarray], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename Paddle parameters to torch's and transpose Linear weights ([in, out] -> [out, in])."""
    linear_weights = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    out = {}
    for name, value in params.items():
        name = paddle_name_to_torch(name)
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        if name in linear_weights and tensor.dim() == 2:
            tensor = tensor.t().contiguous()
        out[name] = tensor
    return out


def _state_from_torch_object(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the model weights in what a torch checkpoint holds: a state dict, a module, or a dict of either."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            state = dict(obj)
        else:
            for key in ("model", "state_dict", "model_state_dict", "net"):
                if key in obj:
                    return _state_from_torch_object(obj[key], path)
            raise UserError(f"{path}: no model weights found (keys: {', '.join(map(str, list(obj)[:8]))})")
    elif isinstance(obj, ModulePlaceholder):
        state = placeholder_state_dict(obj)
    else:
        raise UserError(f"{path}: expected a model or a state dict, found {type(obj).__name__}")
    # DataParallel / DistributedDataParallel wrap the real model as `.module`.
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_arcface(path: str | Path, **arch: Any) -> IRSEArcFace:
    """IR-SE ArcFace from `.pdparams` (MobileFaceSwap) or `.tar`/`.pth`/`.pt` (SimSwap whole model or state
    dict); returned frozen. `arch` goes to IRSEArcFace (default: the official ResNet-101)."""
    path = Path(path)
    model = IRSEArcFace(**arch)
    if path.suffix == ".pdparams":
        state = paddle_to_torch(load_pdparams(path), model)
    else:
        state = _state_from_torch_object(load_torch_pickle(path), path)
    return freeze(load_state_strict(model, state, path))


def _weights_only_load(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(f"{path}: refused or unreadable as a weights-only checkpoint ({first[:200]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise UserError(f"{path}: not a readable torch checkpoint (truncated or corrupt: {str(err)[:200]})") from None


def load_bisenet(path: str | Path, **arch: Any) -> BiSeNet:
    """BiSeNet face parser from a state dict such as DiffFace's `FaceParser.pth`; returned frozen."""
    path = Path(path)
    state = _state_from_torch_object(_weights_only_load(path), path)
    return freeze(load_state_strict(BiSeNet(**arch), state, path))


def load_eyenet(path: str | Path) -> EyeNet:
    """EyeNet from DiffFace's `GazeEstimator.pt` (architecture read from the file) or a bare state dict."""
    path = Path(path)
    obj = _weights_only_load(path)
    arch = {}
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        arch = {k: int(obj[k]) for k in ("nstack", "nfeatures", "nlandmarks") if k in obj}
    state = _state_from_torch_object(obj, path)
    return freeze(load_state_strict(EyeNet(**arch), state, path))
