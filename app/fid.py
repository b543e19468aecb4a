"""FID of swapped faces against the real target faces, from Inception-v3 weights the user has on disk.

Nothing is downloaded: `--inception FILE` names a state dict of torchvision's Inception-v3 (e.g.
`inception_v3_google-0cc3c7bd.pth`; any classifier head, it is dropped), read with `weights_only=True`.
Features are the 2048-d pool of torchvision's network on 299² face crops scaled to [−1, 1] (what its
`transform_input` hands the Google weights). pytorch-fid's `pt_inception-2015-12-05` file loads too (same
names), but runs here through torchvision's blocks, which pool slightly differently from TF-FID's graph: the
numbers are FIDs of torchvision's Inception, comparable between the models of one report, not with papers that
used TF-FID. With fewer crops than feature dimensions (2048) the covariances are rank-deficient and FID is
biased upwards: the report gives the crop count beside it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from facekit.errors import UserError

FEATURE_DIM = 2048


class InceptionFeatures:
    def __init__(self, path: str | Path):
        from torchvision.models import inception_v3

        path = Path(path)
        if not path.is_file():
            raise UserError(f"Inception weights {path} not found (nothing is downloaded: point --inception at a local "
                            "torchvision inception_v3 .pth)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many kinds for a file that is not a checkpoint
            raise UserError(f"{path}: not a readable weights file ({type(err).__name__})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise UserError(f"{path}: expected a state dict of Inception-v3 weights, got {type(state).__name__}")
        model = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False)
        model.fc = torch.nn.Identity()
        kept = {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}
        missing, unexpected = model.load_state_dict(kept, strict=False)
        if missing or unexpected:
            raise UserError(f"{path}: not torchvision Inception-v3 weights ({len(missing)} tensors missing, e.g. "
                            f"{(missing or unexpected)[0]!r}; {len(unexpected)} unexpected)")
        self.model = model.eval().requires_grad_(False)
        self.path = path

    @torch.no_grad()
    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        """[N, 2048] pool features of uint8 RGB crops (any size)."""
        batch = torch.stack([torch.from_numpy(np.ascontiguousarray(c)).permute(2, 0, 1) for c in crops]).float() / 255
        batch = F.interpolate(batch, size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
        return self.model(batch * 2 - 1).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2(ΣaΣb)^½) between two sets of feature rows."""
    from scipy import linalg

    if len(a) < 2 or len(b) < 2:
        raise UserError(f"FID needs at least 2 crops in each set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # singular product: the usual offset on the diagonals
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * np.real(root)))
    return max(value, 0.0)  # equal sets can come out at −1e-5 from the square root's rounding
