"""Official MobileFaceSwap weights (Paddle `.pdparams`) -> this project's student, without Paddle.

The file is read by the restricted unpickler (numpy arrays only, nothing executed) and renamed with the
same Paddle -> torch mapping as the experts' checkpoints (Linear [in, out] transposed, BatchNorm
`_mean`/`_variance`); names are otherwise the official ones (`reference/mobilefaceswap_224_pdparams.tsv`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from facekit.checkpoints import load_state_strict, paddle_to_torch
from facekit.errors import UserError
from facekit.safe_pickle import load_pdparams
from student.config import StudentConfig
from student.iin import BASE_KERNELS
from student.model import MobileFaceSwap


def import_pdparams(path: str | Path, config: StudentConfig | None = None) -> MobileFaceSwap:
    """Load `MobileFaceSwap_224.pdparams` into a `MobileFaceSwap` (eval mode); mismatches are UserErrors."""
    state = load_pdparams(path)
    if any(name.startswith(("Encoder.", "Decoder.")) for name in state):
        raise UserError(
            f"{path}: this is a baked static network, not the injection network "
            "(expected `MobileFaceSwap_224.pdparams` with EncoderModulation/predictor weights)"
        )
    model = MobileFaceSwap(config or StudentConfig())
    weights = paddle_to_torch(state, model)
    # The official network has no shared base kernels: zero bases reproduce it exactly.
    weights.update({name: torch.zeros_like(value) for name, value in model.state_dict().items()
                    if name.startswith(BASE_KERNELS)})
    load_state_strict(model, weights, str(path))
    return model.eval()
