"""Official MobileFaceSwap weights (Paddle `.pdparams`) -> this project's student, without Paddle.

The file is read by the restricted unpickler (numpy arrays only, nothing executed). Paddle's layout
differs from torch's in three ways: Linear weights are [in, out], BatchNorm stores `_mean`/`_variance`,
and it has no `num_batches_tracked`. Names are otherwise the same (`reference/mobilefaceswap_224_pdparams.tsv`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from facekit.errors import UserError
from facekit.safe_pickle import load_pdparams
from student.checkpoint import load_state_strict
from student.config import StudentConfig
from student.model import MobileFaceSwap

_BN_RENAMES = {"._mean": ".running_mean", "._variance": ".running_var"}


def torch_name(paddle_name: str) -> str:
    for suffix, replacement in _BN_RENAMES.items():
        if paddle_name.endswith(suffix):
            return paddle_name[: -len(suffix)] + replacement
    return paddle_name


def paddle_state_to_torch(state: dict[str, np.ndarray], model: MobileFaceSwap) -> dict[str, torch.Tensor]:
    """Rename and transpose; fill the BN batch counters Paddle does not store."""
    linear_weights = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    converted = {}
    for name, array in state.items():
        key = torch_name(name)
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        converted[key] = tensor.t().contiguous() if key in linear_weights and tensor.dim() == 2 else tensor
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in converted:
            converted[key] = torch.zeros_like(value)
    return converted


def import_pdparams(path: str | Path, config: StudentConfig | None = None) -> MobileFaceSwap:
    """Load `MobileFaceSwap_224.pdparams` into a `MobileFaceSwap` (eval mode); mismatches are UserErrors."""
    state = load_pdparams(path)
    if any(name.startswith(("Encoder.", "Decoder.")) for name in state):
        raise UserError(
            f"{path}: this is a baked static network, not the injection network "
            "(expected `MobileFaceSwap_224.pdparams` with EncoderModulation/predictor weights)"
        )
    model = MobileFaceSwap(config or StudentConfig())
    load_state_strict(model, paddle_state_to_torch(state, model), str(path))
    return model.eval()
