"""Faces for the teacher: the synthetic world rendered on the fly (seeded, so any batch can be re-drawn
exactly after a resume) or a folder data set on disk. Images come out in [0,1], as facekit stores them."""
from __future__ import annotations

from pathlib import Path

import torch

from facekit.errors import UserError

SYNTHETIC = "synthetic"


def synthetic_faces(n: int, seed: int, size: int) -> dict[str, torch.Tensor]:
    """n random people in random poses and surroundings: image [n,3,H,W], labels, landmarks5."""
    from facekit.world import synthetic

    identities = synthetic.sample_identities(n, seed)
    attributes = synthetic.sample_attributes(n, seed + 1)
    contexts = synthetic.match_neck(synthetic.sample_contexts(n, seed + 2), identities)
    return synthetic.render_batch(identities, attributes, contexts, size)


class FaceSource:
    """Batches of training faces. `batch(step_seed, n)` is a pure function of its seed for the synthetic
    world; for a folder the indices come from the generator passed in (whose state checkpoints save)."""

    def __init__(self, data: str, size: int, split: str = "train"):
        self.data, self.size = data, size
        self.dataset = None
        if data != SYNTHETIC:
            if not Path(data).is_dir():
                raise UserError(f"data set {data} not found: pass a folder data set or 'synthetic'")
            from facekit.world.folder_dataset import FolderDataset

            self.dataset = FolderDataset(data, split, resolution=size)
            if len(self.dataset) == 0:
                raise UserError(f"data set {data} has no {split!r} images")

    def batch(self, n: int, seed: int, generator: torch.Generator) -> torch.Tensor:
        if self.dataset is None:
            return synthetic_faces(n, seed, self.size)["image"]
        indices = torch.randint(len(self.dataset), (n,), generator=generator).tolist()
        return torch.stack([self.dataset[i]["image"] for i in indices])
