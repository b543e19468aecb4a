"""Generating the paired data set (format: facekit/pairs.py): the job sources (synthetic world with its
exact swaps, or a folder of faces), the teachers (oracle, DiffFace snapshots, an ONNX swapper) and the
sharded, resumable generation loop spread over torchrun ranks."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from facekit.errors import UserError
from facekit.pairs import (FORMAT, VERSION, check_destination, claim, clear_temporaries, finished_shards, read_progress,
                           shard_intact, shard_name, shard_path, write_json, write_shard)

log = logging.getLogger(__name__)


@dataclass
class PairJob:
    """The inputs of one shard: faces in [0,1] and, for the synthetic world, the ground-truth swap."""

    source: torch.Tensor
    target: torch.Tensor
    target_landmarks: torch.Tensor
    truth: torch.Tensor | None = None
    truth_mask: torch.Tensor | None = None
    source_identity: list[str] | None = None  # a data set's labels; the synthetic world's sources are all new


class Teacher(Protocol):
    kind: str
    snapshots: list[dict]  # [{"id": str, "fraction": float}]

    def settings(self) -> dict: ...

    def swap(self, job: PairJob, snapshot: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(swap [B,3,S,S] in [0,1], mask [B,1,S,S], valid [B] bool)."""


def _synthetic_people(seed: int, count: int):
    """The people of `synthetic_job`'s pairs: source and target identities, the target's attributes and its
    context (the target keeps its own neck: the truth is the source's face on the target's neck)."""
    from facekit.world import synthetic

    tgt_ids = synthetic.sample_identities(count, seed + 1)
    tgt_ctx = synthetic.match_neck(synthetic.sample_contexts(count, seed + 5), tgt_ids)
    return synthetic.sample_identities(count, seed), tgt_ids, synthetic.sample_attributes(count, seed + 4), tgt_ctx


def synthetic_job(seed: int, count: int, size: int) -> PairJob:
    """count (source, target) pairs of different synthetic people, with the true swap."""
    from facekit.world import synthetic

    src_ids, tgt_ids, tgt_attrs, tgt_ctx = _synthetic_people(seed, count)
    src = synthetic.render_batch(src_ids, synthetic.sample_attributes(count, seed + 2),
                                 synthetic.match_neck(synthetic.sample_contexts(count, seed + 3), src_ids), size)
    tgt = synthetic.render_batch(tgt_ids, tgt_attrs, tgt_ctx, size)
    truth = synthetic.swap_truth(src_ids, tgt_attrs, tgt_ctx, size)
    mask = (truth["face_mask"] | tgt["face_mask"])[:, None].float()
    return PairJob(src["image"], tgt["image"], tgt["landmarks5"], truth["image"], mask)


def synthetic_colour_swaps(seed: int, count: int, size: int) -> torch.Tensor:
    """The targets of `synthetic_job(seed, count, size)` recoloured with their sources' skin and iris: how far
    a swap gets that transfers colour and nothing else (evaluation only, so pair generation never draws it)."""
    from facekit.world import synthetic

    src_ids, tgt_ids, tgt_attrs, tgt_ctx = _synthetic_people(seed, count)
    return synthetic.render_batch(synthetic.recoloured(tgt_ids, src_ids), tgt_attrs, tgt_ctx, size)["image"]


def folder_job(dataset, seed: int, count: int) -> PairJob:
    """count random (source, target) pairs of different identities from a facekit FolderDataset (aligned
    crops at the teacher's size). Landmarks missing from the data set fall back to the alignment template."""
    from facekit.faces.align import template_points

    generator = torch.Generator().manual_seed(seed)
    identities = dataset.identities
    sources = torch.randint(len(dataset), (count,), generator=generator).tolist()
    targets = []
    for src in sources:
        for _ in range(20):  # a different person, if the data set has one
            tgt = int(torch.randint(len(dataset), (1,), generator=generator))
            if identities[tgt] != identities[src]:
                break
        targets.append(tgt)
    src_items, tgt_items = [dataset[i] for i in sources], [dataset[i] for i in targets]
    size = src_items[0]["image"].shape[-1]
    template = torch.from_numpy(template_points(size)).float()
    landmarks = torch.stack([item["landmarks5"] if item.get("landmarks5") is not None else template
                             for item in tgt_items])
    return PairJob(torch.stack([item["image"] for item in src_items]), torch.stack([item["image"] for item in tgt_items]),
                   landmarks, source_identity=[identities[i] for i in sources])


class OracleTeacher:
    """The synthetic world's ground truth, degraded per snapshot in proportion to (1 − fraction): the face
    region is mixed toward the target's identity (×0.6) and blurred (σ up to 2 px at 64²), so outputs of
    "earlier snapshots" are measurably worse, as a real teacher's are, and the quality regressor can learn it."""

    kind = "oracle"

    def __init__(self, fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 1.0)):
        self.snapshots = [{"id": f"oracle@{f:g}", "fraction": float(f)} for f in fractions]

    def settings(self) -> dict:
        return {"degradation": "mix toward target 0.6*(1-f), gaussian blur sigma 2*(1-f)*S/64"}

    def swap(self, job: PairJob, snapshot: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if job.truth is None:
            raise UserError("the oracle teacher needs the synthetic world (its ground-truth swaps)")
        degrade = 1 - self.snapshots[snapshot]["fraction"]
        face = job.truth * (1 - 0.6 * degrade) + job.target * 0.6 * degrade
        face = _blur(face, 2 * degrade * face.shape[-1] / 64)
        swap = job.target * (1 - job.truth_mask) + face * job.truth_mask
        return swap, job.truth_mask, torch.ones(swap.shape[0], dtype=torch.bool)


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma < 0.05:
        return images
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    padded = torch.nn.functional.pad(images, (radius,) * 4, mode="replicate")
    out = torch.nn.functional.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


class DiffusionTeacher:
    """DiffFace guided sampling with one or more teacher snapshots (one snapshot per shard, round robin)."""

    kind = "diffface"

    def __init__(self, snapshot_paths: list[str], experts, swap_config, device: str = "cpu",
                 autocast: torch.dtype | None = None, batch_size: int = 8):
        from .checkpoint import load_teacher
        from .sampling import for_teacher

        self.models, self.snapshots, configs = [], [], []
        for path in snapshot_paths:
            model, meta = load_teacher(path, device)
            configs.append(for_teacher(swap_config, meta, path))  # with the noise this snapshot was trained on
            self.models.append(model)
            self.snapshots.append({"id": meta.get("snapshot_id", Path(path).stem),
                                   "fraction": float(meta.get("fraction", 1.0))})
        noises = sorted({config.low_frequency_noise for config in configs})
        if len(noises) > 1:
            raise UserError(f"the teacher snapshots were trained with different noise (low_frequency_noise {noises}): "
                            "pass snapshots of one training run")
        self.config = configs[0] if configs else swap_config
        self.experts, self.device, self.autocast = experts, device, autocast
        self.batch_size = batch_size

    def settings(self) -> dict:
        return self.config.to_dict()

    def swap(self, job: PairJob, snapshot: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from .experts import to_model
        from .sampling import guided_swap

        swaps, masks, valid = [], [], []
        for start in range(0, job.source.shape[0], self.batch_size):  # a shard can exceed GPU memory
            rows = slice(start, start + self.batch_size)
            result = guided_swap(self.models[snapshot], self.experts, to_model(job.source[rows]).to(self.device),
                                 to_model(job.target[rows]).to(self.device), self.config,
                                 landmarks=job.target_landmarks[rows].to(self.device), generator=generator,
                                 autocast=self.autocast)
            swaps.append((result.swap.cpu() + 1) / 2)
            masks.append(result.mask.cpu())
            valid.append(result.valid.cpu())
        return torch.cat(swaps), torch.cat(masks), torch.cat(valid)


class OnnxTeacher:
    """A one-shot swapper exported to ONNX (facekit.onnx_swapper: insightface's inswapper_128 interface). The
    source vector is the experts' embedding, optionally mapped by the file's `emap`; the blend mask is the
    parser's kept classes on the target (all ones without a parser)."""

    kind = "onnx"

    def __init__(self, path: str, experts, use_emap: bool = False, pixels: str = "unit"):
        from facekit.onnx_swapper import OneShotOnnxSwapper

        self.swapper = OneShotOnnxSwapper(path, use_emap, pixels)
        self.experts, self.path = experts, path
        self.snapshots = [{"id": Path(path).stem, "fraction": 1.0}]

    def settings(self) -> dict:
        return {"onnx": str(self.path), "emap": self.swapper.emap is not None, "pixels": self.swapper.pixels}

    def swap(self, job: PairJob, snapshot: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from facekit.experts.bisenet import KEPT_CLASSES, class_mask

        from .experts import to_model

        f = torch.nn.functional
        size, wanted = job.target.shape[-1], self.swapper.size
        with torch.no_grad():
            latent = self.swapper.latent(self.experts.identity(to_model(job.source)).float().cpu().numpy())
            target = job.target if wanted in (None, size) else f.interpolate(
                job.target, size=(wanted, wanted), mode="bilinear", antialias=True, align_corners=False)
            out = torch.from_numpy(self.swapper(target.numpy(), latent))
            if out.shape[-1] != size:
                out = f.interpolate(out, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            mask = (class_mask(self.experts.parse(to_model(job.target)), KEPT_CLASSES) if self.experts.parser is not None
                    else torch.ones_like(job.target[:, :1]))
        swap = job.target * (1 - mask) + out.clamp(0, 1) * mask
        return swap, mask, torch.isfinite(out).flatten(1).all(dim=1)


# --- generation ---------------------------------------------------------------------------------------
def generate_pairs(root: str | Path, teacher: Teacher, experts, total: int, shard_size: int = 64,
                   image_size: int = 64, seed: int = 0, progress: bool = True, data: str = "synthetic",
                   image_codec: str = "png") -> dict:
    """Write (or finish writing) `total` pairs under root; returns {"written", "dropped", "shards"} for
    this rank. Faces come from the synthetic world or a folder data set (`data`). Safe to kill at any
    moment and rerun."""
    root = Path(root)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    check_destination(root, total, shard_size)
    num_shards = math.ceil(total / shard_size)
    manifest = {"format": FORMAT, "version": VERSION, "image_size": image_size, "image_codec": image_codec, "total_pairs": total,
                "shard_size": shard_size, "num_shards": num_shards, "seed": seed, "data": str(data),
                "teacher": {"kind": teacher.kind, "snapshots": teacher.snapshots}, "sampling": teacher.settings()}
    dataset = None
    if data != "synthetic":
        if teacher.kind == "oracle":
            raise UserError("the oracle teacher only knows the synthetic world's true swaps: use --data synthetic")
        if not Path(data).is_dir():
            raise UserError(f"data set {data} not found: pass a facekit folder data set or 'synthetic'")
        from facekit.world.folder_dataset import FolderDataset

        dataset = FolderDataset(data, resolution=image_size)
        if len(dataset) == 0:
            raise UserError(f"data set {data} is empty")
    claim(root, manifest)
    lock = _lock(root / "progress" / f".lock-rank-{rank:05d}")  # held until this process ends
    progress_path = root / "progress" / f"rank-{rank:05d}.json"
    mine = read_progress(progress_path) if progress_path.is_file() else {"shards": {}}
    mine_shards = [k for k in range(num_shards) if k % world == rank]
    for k in mine_shards:  # writes this rank was killed in
        clear_temporaries(root, shard_name(k))
    done = finished_shards(root)
    mine_names = {shard_name(k) for k in mine_shards}  # each rank checks its own: no two delete one shard
    for name in [n for n in done if n in mine_names and not shard_intact(root, n, done[n])]:
        log.warning("%s is damaged: writing it again", shard_path(root, name))
        shard_path(root, name).unlink(missing_ok=True)
        del done[name]
    todo = [k for k in mine_shards if shard_name(k) not in done]
    own_total = sum(min(shard_size, total - k * shard_size) for k in mine_shards)

    from tqdm import tqdm

    bar = tqdm(total=own_total, initial=own_total - sum(min(shard_size, total - k * shard_size) for k in todo),
               desc=f"pairs (rank {rank})", unit="pair", disable=not progress)
    written = dropped = 0
    for k in todo:
        count = min(shard_size, total - k * shard_size)
        shard_seed = seed * 1_000_003 + k * 7919
        job = synthetic_job(shard_seed, count, image_size) if dataset is None else folder_job(dataset, shard_seed, count)
        snapshot = k % len(teacher.snapshots) if teacher.kind != "oracle" else None
        pairs, drops = _make_shard(teacher, experts, job, k, shard_size, snapshot, torch.Generator().manual_seed(shard_seed))
        for drop in drops:
            log.warning("pair %d dropped: %s", drop["pair"], drop["reason"])
        size = write_shard(root, k, pairs, manifest)
        mine["shards"][shard_name(k)] = {"pairs": int(pairs["pair_index"].numel()), "bytes": size, "dropped": drops}
        write_json(progress_path, mine)
        written += int(pairs["pair_index"].numel())
        dropped += len(drops)
        bar.update(count)
    bar.close()
    lock.close()
    return {"written": written, "dropped": dropped, "shards": len(todo)}


def _lock(path: Path):
    """One writer per rank and folder: a second `pairs generate` into the same --out is refused."""
    import fcntl

    handle = open(path, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"another `pairs generate` is writing into {path.parent.parent}; wait for it to finish "
                        "(or stop it) and rerun, or choose another --out") from None
    return handle


def _make_shard(teacher: Teacher, experts, job: PairJob, k: int, shard_size: int, snapshot: int | None,
                generator: torch.Generator) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Run the teacher on one shard's pairs. The oracle's snapshots cycle per pair (all fractions in every
    shard); a diffusion teacher uses one snapshot per shard (one model per batch)."""
    from .experts import to_model
    from .sampling import identity_similarity

    count = job.source.shape[0]
    if snapshot is None:
        snap = torch.arange(count) % len(teacher.snapshots)
        swap = torch.empty_like(job.target)
        mask = torch.empty_like(job.target[:, :1])
        valid = torch.ones(count, dtype=torch.bool)
        for s in snap.unique().tolist():
            rows = snap == s
            sub = PairJob(job.source[rows], job.target[rows], job.target_landmarks[rows], job.truth[rows], job.truth_mask[rows])
            swap[rows], mask[rows], valid[rows] = teacher.swap(sub, s, generator)
    else:
        snap = torch.full((count,), snapshot)
        swap, mask, valid = teacher.swap(job, snapshot, generator)
    valid &= torch.isfinite(swap).flatten(1).all(dim=1)
    keep = valid.nonzero().flatten()
    drops = [{"pair": k * shard_size + i, "reason": "non-finite teacher output (NaN/inf in sampling)"}
             for i in (~valid).nonzero().flatten().tolist()]
    device = next(experts.embedder.parameters()).device
    similarity = identity_similarity(experts, to_model(job.source[keep]).to(device), to_model(swap[keep]).to(device))
    fractions = torch.tensor([teacher.snapshots[s]["fraction"] for s in snap.tolist()], dtype=torch.float32)
    pairs = {"source": job.source[keep], "target": job.target[keep], "swap": swap[keep], "mask": mask[keep],
             "id_similarity": similarity.float().cpu(), "fraction": fractions[keep], "snapshot": snap[keep].long(),
             "pair_index": keep.long() + k * shard_size}
    if job.truth is not None:
        pairs["truth"] = job.truth[keep]
    if job.source_identity is not None:  # the held-out split is by person: photos of one never straddle it
        pairs["source_identity"] = [job.source_identity[i] for i in keep.tolist()]
    return pairs, drops
