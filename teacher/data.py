"""Faces for the teacher: the synthetic world rendered on the fly (seeded, so any batch can be re-drawn
exactly after a resume) or a folder data set on disk. Images come out in [0,1], as facekit stores them."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from facekit.errors import UserError

SYNTHETIC = "synthetic"


def synthetic_faces(n: int, seed: int, size: int, neck_mismatch: float = 0.0,
                    recolour: bool = False) -> dict[str, torch.Tensor]:
    """n random people in random poses and surroundings: image [n,3,H,W], labels, landmarks5; with `recolour`
    also "recoloured": each image redrawn with another person's skin and iris colours, nothing else changed.

    Each neck has its own face's skin tone, except for a `neck_mismatch` share drawn on another person's neck:
    the situation of a swap, whose truth keeps the target's neck. Without those, a teacher can copy the face's
    tone from the neck and ignore its identity condition."""
    from facekit.world import synthetic

    identities = synthetic.sample_identities(n, seed)
    attributes = synthetic.sample_attributes(n, seed + 1)
    contexts = synthetic.match_neck(synthetic.sample_contexts(n, seed + 2), identities)
    if neck_mismatch:  # drawn only when on: runs without it render what they always rendered
        generator = torch.Generator().manual_seed(seed + 3)
        others = synthetic.match_neck(contexts, synthetic.sample_identities(n, seed + 4))
        mismatched = torch.rand(n, generator=generator) < neck_mismatch
        for key in ("neck_lightness", "neck_warmth"):
            contexts[key] = torch.where(mismatched, others[key], contexts[key])
    faces = synthetic.render_batch(identities, attributes, contexts, size)
    if recolour:
        others = synthetic.recoloured(identities, synthetic.sample_identities(n, seed + 5))
        faces["recoloured"] = synthetic.render_batch(others, attributes, contexts, size)["image"]
    return faces


Batch = tuple[torch.Tensor, torch.Tensor | None]  # faces [n,3,H,W] in [0,1], and their recoloured twins or None


def step_seed(seed: int, step: int, world: int, rank: int) -> int:
    """The seed of a training step's synthetic batch on one rank: a resumed run redraws exactly its faces."""
    return (seed * 1_000_003 + step) * world + rank


class _SyntheticSteps(torch.utils.data.Dataset):
    """Item i is step i's synthetic batch, so DataLoader workers can render the steps ahead in order."""

    def __init__(self, n: int, size: int, seed: int, world: int, rank: int, neck_mismatch: float, recolour: bool):
        self.n, self.size, self.seed, self.world, self.rank = n, size, seed, world, rank
        self.neck_mismatch, self.recolour = neck_mismatch, recolour

    def __getitem__(self, step: int) -> Batch:
        seed = step_seed(self.seed, step, self.world, self.rank)
        return _synthetic_batch(self.n, seed, self.size, self.neck_mismatch, self.recolour)


def _synthetic_batch(n: int, seed: int, size: int, neck_mismatch: float, recolour: bool) -> Batch:
    faces = synthetic_faces(n, seed, size, neck_mismatch, recolour)
    return faces["image"], faces.get("recoloured")


class FaceSource:
    """Batches of training faces, one per step (`batches`): a pure function of the step's seed for the synthetic
    world; for a folder the indices come from the generator passed in (whose state checkpoints save)."""

    def __init__(self, data: str, size: int, split: str = "train", neck_mismatch: float = 0.0,
                 recolour: bool = False):
        self.data, self.size, self.neck_mismatch, self.recolour = data, size, neck_mismatch, recolour
        self.dataset = None
        if data != SYNTHETIC:
            if neck_mismatch:
                raise UserError(f"neck_mismatch is a synthetic-world option; data set {data} has its own necks")
            if recolour:
                raise UserError(f"recolour is a synthetic-world option; data set {data} cannot redraw its faces")
            if not Path(data).is_dir():
                raise UserError(f"data set {data} not found: pass a folder data set or 'synthetic'")
            from facekit.world.folder_dataset import FolderDataset

            self.dataset = FolderDataset(data, split, resolution=size)
            if len(self.dataset) == 0:
                raise UserError(f"data set {data} has no {split!r} images")

    def batches(self, steps: range, n: int, seed: int, world: int, rank: int, generator: torch.Generator,
                workers: int = 0, pin_memory: bool = False) -> Iterator[Batch]:
        """One batch per step, in order. `workers` processes render synthetic batches ahead (the renderer is
        one-threaded CPU work a GPU would wait on); folder batches draw their indices from `generator` as their
        step starts, so the generator's checkpointed state stays the step's."""
        if self.dataset is None and workers > 0:
            steps_ahead = _SyntheticSteps(n, self.size, seed, world, rank, self.neck_mismatch, self.recolour)
            yield from torch.utils.data.DataLoader(
                steps_ahead, batch_size=None, sampler=steps, num_workers=workers, pin_memory=pin_memory,
                prefetch_factor=4,
                generator=torch.Generator())  # its worker seeds must not draw from the training's global RNG
            return
        for step in steps:
            yield self.batch(n, step_seed(seed, step, world, rank), generator)

    def batch(self, n: int, seed: int, generator: torch.Generator) -> Batch:
        if self.dataset is None:
            return _synthetic_batch(n, seed, self.size, self.neck_mismatch, self.recolour)
        indices = torch.randint(len(self.dataset), (n,), generator=generator).tolist()
        return torch.stack([self.dataset[i]["image"] for i in indices]), None
