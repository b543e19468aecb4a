"""Pairs as the quality regressor and the distillation read them, on top of the teacher's pair reader.

One sample is a dict: pair_id (str), identity (the source's identity label, str), source / target / swap
[3,H,W] in [0,1], mask [1,H,W] (the teacher's blend mask), id_cosine (cos(D_I(source), D_I(swap)) as the
teacher recorded it), fraction (training fraction of the teacher snapshot, 0..1) and, on the synthetic
world, truth [3,H,W] (the perfect swap). Splits are by source identity, so validation faces were never seen.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from facekit.errors import UserError

IMAGE_KEYS = ("source", "target", "swap")
REQUIRED_KEYS = ("pair_id", "identity", *IMAGE_KEYS, "mask", "id_cosine", "fraction")


class PairList(Dataset):
    """Pairs held in memory (tests, the evidence run, and the adapter over the teacher's reader)."""

    def __init__(self, records: Sequence[Mapping[str, Any]]):
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
        self.records = list(records)
        self.resolution = sizes.pop()[0]
        self.has_truth = has_truth.pop()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        sample = {k: record[k] for k in REQUIRED_KEYS}
        sample["identity"] = str(sample["identity"])
        sample["id_cosine"] = float(sample["id_cosine"])
        sample["fraction"] = float(sample["fraction"])
        if self.has_truth:
            sample["truth"] = record["truth"]
        return sample

    @property
    def pair_ids(self) -> list[str]:
        return [str(r["pair_id"]) for r in self.records]

    @property
    def identities(self) -> list[str]:
        return [str(r["identity"]) for r in self.records]

    def subset(self, indices: Sequence[int]) -> "PairList":
        return PairList([self.records[i] for i in indices])


def open_pairs(path: str | Path) -> PairList:
    """Read a pair directory written by `distilswap pairs generate` through the teacher's own reader."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such pair directory; write pairs with `distilswap pairs generate`")
    try:
        from teacher import pairs as teacher_pairs
    except ModuleNotFoundError as err:
        if err.name != "teacher.pairs":
            raise
        raise UserError("this install has no pair reader (teacher.pairs): cannot read pair shards") from None
    return PairList(list(teacher_pairs.iter_records(path)))


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


def stack(samples: Sequence[Mapping[str, Any]], key: str) -> torch.Tensor:
    return torch.stack([s[key] for s in samples])
