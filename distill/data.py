"""Pairs as the quality regressor and the distillation read them, on top of the pair format's reader.

One sample is a dict: pair_id (str), identity (the source's identity label, str), source / target / swap
[3,H,W] in [0,1], mask [1,H,W] (the teacher's blend mask), id_cosine (cos(D_I(source), D_I(swap)) as the
teacher recorded it), fraction (training fraction of the teacher snapshot, 0..1) and, on the synthetic
world, truth [3,H,W] (the perfect swap). Splits are by source identity, so validation faces were never seen.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from facekit.errors import UserError

if TYPE_CHECKING:
    from facekit.pair_stream import PairStream

log = logging.getLogger(__name__)

IMAGE_KEYS = ("source", "target", "swap")
META_KEYS = ("pair_id", "identity", "id_cosine", "fraction")
REQUIRED_KEYS = (*META_KEYS, *IMAGE_KEYS, "mask")


class PairList(Dataset):
    """Pairs as a lazy view over an indexable source (the format's `PairDataset`, or dicts in memory).

    The per-pair scalars (ids, identities, teacher cosine, fraction) are held in memory, so splitting and
    scoring never touch the images; images are read when a sample is asked for."""

    def __init__(self, source: Sequence[Mapping[str, Any]], meta: Mapping[str, Sequence[Any]], resolution: int,
                 has_truth: bool, indices: Sequence[int] | None = None, root: Path | None = None,
                 records: Sequence[dict] | None = None):
        self.source, self.resolution, self.has_truth = source, resolution, has_truth
        self.root, self._records = root, records  # the shards and their index rows, when read from disk
        self.indices = list(range(len(source))) if indices is None else list(indices)
        self._meta = {k: list(v) for k, v in meta.items()}
        if not self.indices:
            raise UserError("no pairs to read: the pair set (or its split) is empty")

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> "PairList":
        """In-memory pairs with the keys of this module's docstring (truth optional, all or none)."""
        if not records:
            raise UserError("no pairs to read: the pair set is empty")
        for record in records:
            missing = [k for k in REQUIRED_KEYS if k not in record]
            if missing:
                raise UserError(f"pair {record.get('pair_id', '?')} lacks {', '.join(missing)}")
        sizes = {tuple(r["swap"].shape[-2:]) for r in records}
        if len(sizes) > 1:
            raise UserError(f"pairs mix resolutions {sorted(sizes)}: generate (or select) one resolution per set")
        has_truth = {"truth" in r for r in records}
        if len(has_truth) > 1:
            raise UserError("some pairs carry a ground-truth swap and others do not: mixed pair sets are refused")
        meta = {k: [r[k] for r in records] for k in META_KEYS}
        return cls(list(records), meta, sizes.pop()[0], has_truth.pop())

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.indices[index]
        item = self.source[row]
        sample = {k: item[k] for k in (*IMAGE_KEYS, "mask")}
        for key in META_KEYS:
            sample[key] = self._meta[key][row]
        if self.has_truth:
            sample["truth"] = item["truth"]
        return sample

    def _column(self, key: str) -> list[Any]:
        return [self._meta[key][i] for i in self.indices]

    @property
    def pair_ids(self) -> list[str]:
        return self._column("pair_id")

    @property
    def identities(self) -> list[str]:
        return self._column("identity")

    @property
    def fractions(self) -> torch.Tensor:
        return torch.tensor(self._column("fraction"), dtype=torch.float32)

    @property
    def id_cosines(self) -> torch.Tensor:
        return torch.tensor(self._column("id_cosine"), dtype=torch.float32)

    @property
    def fingerprint(self) -> str:
        """Identifies the pair set (ids, fractions, teacher cosines): scores of other pairs are refused."""
        digest = hashlib.sha256()
        for pid, fraction, cosine in zip(self.pair_ids, self._column("fraction"), self._column("id_cosine")):
            digest.update(f"{pid}:{float(fraction):.6f}:{float(cosine):.6f};".encode())
        return digest.hexdigest()[:16]

    def subset(self, indices: Sequence[int]) -> "PairList":
        return PairList(self.source, self._meta, self.resolution, self.has_truth, [self.indices[i] for i in indices],
                        self.root, self._records)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.source, (_Uint8Images, list))

    def stream(self, seed: int, rank: int = 0, world: int = 1, workers: int = 2) -> "PairStream":
        """These pairs streamed from their shards (facekit.pair_stream), split over `world` processes."""
        from facekit.pair_stream import PairStream

        if self.root is None or self._records is None:
            raise UserError("only pairs read from a pairs folder can be streamed")
        return PairStream(self.root, [self._records[i] for i in self.indices], seed, rank, world, workers)


def open_pairs(path: str | Path, max_memory_bytes: float = 8e9, progress: bool = True) -> PairList:
    """A pair directory written by `distilswap pairs generate`. The per-pair scalars come from its metadata
    index (one small file per shard, no image decoded); sets that fit in max_memory_bytes are decoded once, shard
    by shard, and held as uint8; larger ones stay on disk, read lazily or streamed (`PairList.stream`)."""
    from facekit.pairs import PairDataset, read_shard, shard_path

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such pair directory; write pairs with `distilswap pairs generate`")
    dataset = PairDataset(path)
    if len(dataset) == 0:
        raise UserError(f"{path}: no finished shards yet; let `distilswap pairs generate` finish")
    if len(dataset) < dataset.manifest["total_pairs"]:
        log.warning("%s: using %d of %d pairs (%d of %d shards finished); rerun `distilswap pairs generate` to "
                    "complete the set", path, len(dataset), dataset.manifest["total_pairs"], len(dataset.shards),
                    dataset.manifest["num_shards"])
    records = dataset.records
    meta = {"pair_id": [str(r["pair_index"]) for r in records], "identity": [r["identity"] for r in records],
            "id_cosine": [float(r["id_similarity"]) for r in records], "fraction": [float(r["fraction"]) for r in records]}
    resolution = int(dataset.manifest["image_size"])
    first = next(read_shard(shard_path(path, dataset.shards[0])))
    has_truth = "truth" in first
    source: Sequence[Mapping[str, Any]] = dataset
    if len(dataset) * (10 + 3 * has_truth) * resolution**2 <= max_memory_bytes:
        items = []
        for name in tqdm(dataset.shards, desc="reading pairs", unit="shard", disable=not progress):
            items += [{k: v for k, v in pair.items() if k != "json"}
                      for pair in read_shard(shard_path(path, name), size=resolution)]
        if len(items) != len(records):
            raise UserError(f"{path}: the shards hold {len(items)} pairs but the index lists {len(records)}; "
                            "delete the damaged shard and rerun `distilswap pairs generate`")
        source = _Uint8Images(items)
    else:
        log.warning("%s: %d pairs do not fit in %.1f GB: training streams them from the shards", path, len(dataset),
                    max_memory_bytes / 1e9)
    log.info("%s: %d pairs from %d shards at %d²%s", path, len(dataset), len(dataset.shards), resolution,
             " with ground truth" if has_truth else "")
    return PairList(source, meta, resolution, has_truth, root=path, records=records)


def stream_sample(pair: Mapping[str, Any]) -> dict[str, Any]:
    """A pair as `PairStream` decodes it, in the shape of a `PairList` sample."""
    from facekit.pairs import sample_from

    sample = sample_from(pair)
    images = {k: sample[k] for k in (*IMAGE_KEYS, "mask", "truth") if k in sample}
    return {**images, "pair_id": str(int(sample["pair_index"])), "identity": sample["identity"],
            "id_cosine": float(sample["id_similarity"]), "fraction": float(sample["fraction"])}


class _Uint8Images:
    """Pairs held as uint8 (as stored in the shards: no precision is lost), served as float [0,1]."""

    def __init__(self, items: list[dict[str, torch.Tensor]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v.float() / 255 for k, v in self.items[index].items()}


def require_full_batch(count: int, batch_size: int, world: int = 1) -> None:
    """Training needs one batch of distinct pairs (a streamed one would repeat pairs, and the BatchNorm
    recalibration would have no batch to measure on)."""
    if count < batch_size * world:
        raise UserError(f"{count} training pairs cannot fill one batch of {batch_size} x {world} processes: "
                        "lower batch_size or add pairs")


def batch_indices(count: int, batch_size: int, seed: int, step: int, rank: int = 0, world: int = 1) -> list[int]:
    """The pairs of one rank at one step: a seeded permutation per epoch, so the order is a pure function of
    the step and resuming needs no sampler state."""
    require_full_batch(count, batch_size, world)
    per_epoch = count // (batch_size * world)
    epoch, offset = divmod(step, per_epoch)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    start = (offset * world + rank) * batch_size
    return order[start : start + batch_size].tolist()


def training_batches(pairs: PairList, batch_size: int, seed: int, step: int = 0, rank: int = 0, world: int = 1,
                     stream: bool = False, workers: int = 2) -> Callable[[], list[dict[str, Any]]]:
    """The samples of each next training step from `step` on: seeded random draws from memory, or the shard
    stream (position step x batch_size, so a resumed run sees the data it would have seen). Sets that do not
    fit in memory always stream."""
    require_full_batch(len(pairs), batch_size, world)
    if not stream and pairs.in_memory:
        steps = itertools.count(step)
        return lambda: [pairs[i] for i in batch_indices(len(pairs), batch_size, seed, next(steps), rank, world)]
    log.info("streaming %d training pairs from their shards (%d decoding threads)", len(pairs), workers)
    samples = pairs.stream(seed, rank, world, workers).samples(step * batch_size)
    return lambda: [stream_sample(next(samples)) for _ in range(batch_size)]


def split_by_identity(identities: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices (train, val) with every source identity on one side only.

    An identity goes to val when a seeded hash of its label falls below val_fraction: the split does not depend
    on pair order or on which other identities exist, so `quality train` and `distill` agree on it."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"validation fraction must be in (0, 1), got {val_fraction}")
    labels = sorted(set(identities))
    if len(labels) < 2:
        raise UserError(f"a split by identity needs at least 2 source identities, the pairs have {len(labels)}")
    held = {label for label in labels if _unit_hash(label, seed) < val_fraction}
    if not held:  # tiny sets: hold out the lowest-hash identity rather than nothing
        held = {min(labels, key=lambda label: _unit_hash(label, seed))}
    if len(held) == len(labels):
        held.discard(max(labels, key=lambda label: _unit_hash(label, seed)))
    train = [i for i, label in enumerate(identities) if label not in held]
    val = [i for i, label in enumerate(identities) if label in held]
    return train, val


def _unit_hash(label: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{label}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64

