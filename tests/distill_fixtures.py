"""Tiny in-memory pair sets for the quality / distillation tests, built from the synthetic world: the teacher
swap is the ground truth degraded in proportion to (1 − fraction) (blurred and identity-mixed toward the
target), so a good regressor can rank them and reweighting has something to find."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from facekit.world import synthetic as world
from facekit.experts.arcface import IRSEArcFace
from facekit.experts.frozen import freeze
from distill.data import PairList


def tiny_embedder(dim: int = 32) -> IRSEArcFace:
    torch.manual_seed(0)
    return freeze(IRSEArcFace(blocks=(1, 1, 1, 1), widths=(4, 8, 16, dim), embedding_dim=dim))


def blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (sigma [B] in pixels; 0 leaves the image unchanged)."""
    radius = 4
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    out = []
    for image, s in zip(images, sigma.tolist()):
        if s <= 0:
            out.append(image)
            continue
        g = torch.exp(-(x**2) / (2 * s * s))
        g = (g / g.sum()).view(1, 1, 1, -1).expand(3, 1, 1, -1)
        y = F.conv2d(F.pad(image[None], (radius, radius, 0, 0), mode="replicate"), g, groups=3)
        y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), g.transpose(-1, -2), groups=3)
        out.append(y[0])
    return torch.stack(out)


def synthetic_pairs(identities: int = 4, per_identity: int = 3, size: int = 32, seed: int = 0,
                    embedder: torch.nn.Module | None = None) -> PairList:
    n = identities * per_identity
    people = world.sample_identities(identities + 1, seed)
    source_rows = torch.arange(identities).repeat_interleave(per_identity)
    target_rows = torch.full((n,), identities)  # one target person for all, never a source
    src = world.render_batch(world.index(people, source_rows), world.sample_attributes(n, seed + 1),
                             world.sample_contexts(n, seed + 2), size)
    attrs, ctxs = world.sample_attributes(n, seed + 3), world.sample_contexts(n, seed + 4)
    tgt = world.render_batch(world.index(people, target_rows), attrs, ctxs, size)
    truth = world.swap_truth(world.index(people, source_rows), attrs, ctxs, size)
    fraction = torch.rand(n, generator=torch.Generator().manual_seed(seed + 5))
    mix = 0.6 * (1 - fraction)
    mixed = {k: (1 - mix) * people[k][source_rows] + mix * people[k][target_rows] for k in people}
    swap = world.render_batch(mixed, attrs, ctxs, size)["image"]
    swap = blur(swap, 2.0 * (1 - fraction) * size / 32)
    mask = world.face_mask(tgt["labels"]).float()[:, None]
    cosine = torch.zeros(n)
    if embedder is not None:
        with torch.no_grad():
            cosine = F.cosine_similarity(embedder(src["image"])[0], embedder(swap)[0])
    return PairList.from_records([
        {"pair_id": f"p{i:04d}", "identity": f"id{int(source_rows[i])}", "source": src["image"][i],
         "target": tgt["image"][i], "swap": swap[i], "mask": mask[i], "id_cosine": float(cosine[i]),
         "fraction": float(fraction[i]), "truth": truth["image"][i]}
        for i in range(n)
    ])
