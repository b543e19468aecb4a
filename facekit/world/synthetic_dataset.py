"""Synthetic-world data sets on disk in the shared folder format (the one `facekit.world.folder_dataset` reads),
so every stage reads synthetic and real faces through one path; and the sources x targets contact sheet.

Layout (format "distilswap-faces/1"):
    ROOT/dataset.json   {"format", "resolution", "aligned", "num_samples", "world": WorldConfig}
    ROOT/meta.jsonl     one JSON per sample: image, identity, split, landmarks5, labels, gaze, attributes,
                        seed (+ identity_params and context: everything needed to redraw the sample)
    ROOT/images/<identity>/<name>.png, ROOT/labels/<identity>/<name>.png (uint8 class map)

Every sample is drawn from its own seed (world seed x 1e6 + index), in fixed chunks, so the same config
gives the same bytes and an interrupted write resumes where it stopped. dataset.json is written last:
its presence means the data set is complete.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from facekit.world import synthetic
from facekit.errors import UserError
from facekit.files import atomic_write, atomic_write_text, read_json

FORMAT = "distilswap-faces/1"
CHUNK = 64


@dataclass(frozen=True)
class WorldConfig:
    """What a synthetic data set is: changing any field gives a different data set."""

    seed: int = 0
    identities: int = 200
    per_identity: int = 10
    size: int = 128
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.identities < 2 or self.per_identity < 1:
            raise UserError("world: need at least 2 identities and 1 image per identity (--identities, --per-identity)")
        if not 32 <= self.size <= 512:
            raise UserError(f"world: --size {self.size} is out of range; use 32..512 (64..256 is typical)")
        if not 0.0 < self.test_fraction < 1.0:
            raise UserError(f"world: --test-fraction {self.test_fraction} must be strictly between 0 and 1")

    @property
    def num_samples(self) -> int:
        return self.identities * self.per_identity

    def test_identities(self) -> set[int]:
        """Identity indices of the test split: a seeded choice, at least one, never all."""
        count = min(self.identities - 1, max(1, round(self.test_fraction * self.identities)))
        order = torch.randperm(self.identities, generator=torch.Generator().manual_seed(self.seed + 7))
        return set(order[:count].tolist())


def identity_name(index: int) -> str:
    return f"id{index:05d}"


def sample_seed(config: WorldConfig, index: int) -> int:
    return config.seed * 1_000_000 + index


def world_samples(config: WorldConfig, indices: list[int]) -> tuple[synthetic.Params, synthetic.Params, synthetic.Params]:
    """(identities, attributes, contexts) of data-set samples, each [len(indices)]; sample i belongs to
    identity i // per_identity, and its attributes/context come from its own seed."""
    people = synthetic.sample_identities(config.identities, config.seed)
    identities = synthetic.index(people, [i // config.per_identity for i in indices])
    attributes = synthetic.concat([synthetic.sample_attributes(1, 2 * sample_seed(config, i)) for i in indices])
    contexts = synthetic.concat([synthetic.sample_contexts(1, 2 * sample_seed(config, i) + 1) for i in indices])
    return identities, attributes, synthetic.match_neck(contexts, identities)


def render_samples(config: WorldConfig, indices: list[int]) -> tuple[dict[str, torch.Tensor], tuple]:
    params = world_samples(config, indices)
    return synthetic.render_batch(*params, size=config.size), params


def write_dataset(root: str | Path, config: WorldConfig, progress: bool = True) -> Path:
    """Write (or finish writing) the data set; returns ROOT. Refuses a ROOT holding a different data set."""
    root = Path(root)
    manifest = _manifest(config)
    existing = root / "dataset.json"
    if existing.exists():
        if read_json(existing, f"choose another --out, or delete {root} to write the data set again") == manifest:
            return root
        raise UserError(f"{root} already holds a different data set; choose another --out or delete it")
    if root.exists() and any(root.iterdir()) and not (root / "images").is_dir():
        raise UserError(f"{root} exists and is not a synthetic data set being written; choose an empty --out")
    from tqdm import tqdm

    test_ids = config.test_identities()
    records: list[str] = []
    bar = tqdm(total=config.num_samples, desc="render", unit="face", disable=not progress)
    for indices in _chunks(config.num_samples):
        records.extend(_write_chunk(root, config, indices, test_ids))
        bar.update(len(indices))
    bar.close()
    atomic_write_text(root / "meta.jsonl", "".join(records))
    atomic_write_text(root / "dataset.json", json.dumps(manifest, indent=2) + "\n")
    return root


def _manifest(config: WorldConfig) -> dict:
    return {
        "format": FORMAT,
        "resolution": config.size,
        "aligned": True,
        "num_samples": config.num_samples,
        "world": {"generator": "facekit.world.synthetic", **dataclasses.asdict(config)},
    }


def _chunks(total: int) -> Iterator[list[int]]:
    for start in range(0, total, CHUNK):
        yield list(range(start, min(start + CHUNK, total)))


def _write_chunk(root: Path, config: WorldConfig, indices: list[int], test_ids: set[int]) -> list[str]:
    """Render the chunk unless all its files exist (resume), and return its meta lines."""
    names = [(identity_name(i // config.per_identity), f"{i % config.per_identity:04d}") for i in indices]
    image_paths = [f"images/{who}/{name}.png" for who, name in names]
    label_paths = [f"labels/{who}/{name}.png" for who, name in names]
    out, (identities, attributes, contexts) = render_samples(config, indices)
    if not all((root / p).exists() for p in image_paths + label_paths):
        images = (out["image"] * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        labels = out["labels"].to(torch.uint8).numpy()
        for k in range(len(indices)):
            _write_png(root / image_paths[k], images[k])
            _write_png(root / label_paths[k], labels[k])
    lines = []
    for k, index in enumerate(indices):
        record = {
            "image": image_paths[k],
            "identity": names[k][0],
            "split": "test" if index // config.per_identity in test_ids else "train",
            "landmarks5": _round(out["landmarks5"][k]),
            "labels": label_paths[k],
            "gaze": _round(out["gaze"][k]),
            "attributes": _row(attributes, k),
            "seed": sample_seed(config, index),
            "identity_params": _row(identities, k),
            "context": _row(contexts, k),
        }
        lines.append(json.dumps(record) + "\n")
    return lines


def _row(params: synthetic.Params, k: int) -> dict[str, float]:
    return {name: round(float(value[k]), 6) for name, value in params.items()}


def _round(values: torch.Tensor) -> list:
    return np.round(values.double().numpy(), 4).tolist()


def _write_png(path: Path, array: np.ndarray) -> None:
    # compress_level 1: 3x faster than the default 6
    atomic_write(path, lambda temp: Image.fromarray(array).save(temp, format="PNG", compress_level=1))


def contact_sheet(sources: int = 4, targets: int = 6, size: int = 128, seed: int = 0, gap: int = 4) -> torch.Tensor:
    """[3,H,W] grid: top row the targets, left column the sources, cell (i, j) = swap_truth(source i,
    target j). Sources are drawn frontal and neutral so their identity is easy to read."""
    people = synthetic.sample_identities(sources + targets, seed)
    source_ids, target_ids = synthetic.index(people, list(range(sources))), synthetic.index(
        people, list(range(sources, sources + targets))
    )
    neutral = synthetic.neutral_attributes(sources)
    source_contexts = synthetic.match_neck(synthetic.sample_contexts(sources, seed + 1), source_ids)
    target_attributes = synthetic.sample_attributes(targets, seed + 2)
    target_contexts = synthetic.match_neck(synthetic.sample_contexts(targets, seed + 3), target_ids)
    source_images = synthetic.render_batch(source_ids, neutral, source_contexts, size)["image"]
    target_images = synthetic.render_batch(target_ids, target_attributes, target_contexts, size)["image"]
    rows = torch.arange(sources).repeat_interleave(targets).tolist()
    cols = torch.arange(targets).repeat(sources).tolist()
    swaps = synthetic.swap_truth(
        synthetic.index(source_ids, rows), synthetic.index(target_attributes, cols),
        synthetic.index(target_contexts, cols), size,
    )["image"]
    cell = size + gap
    sheet = torch.ones(3, (sources + 1) * cell + gap, (targets + 1) * cell + gap)

    def place(image: torch.Tensor, row: int, col: int) -> None:
        sheet[:, gap + row * cell: gap + row * cell + size, gap + col * cell: gap + col * cell + size] = image

    for j in range(targets):
        place(target_images[j], 0, j + 1)
    for i in range(sources):
        place(source_images[i], i + 1, 0)
        for j in range(targets):
            place(swaps[i * targets + j], i + 1, j + 1)
    return sheet


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    """[3,H,W] float [0,1] -> PNG, atomically."""
    path = Path(path)
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    _write_png(path, array)
    return path


# Distinct colours for the 19 BiSeNet classes (label maps in previews).
PALETTE = torch.tensor([
    [0, 0, 0], [204, 153, 120], [120, 80, 40], [160, 100, 50], [40, 120, 220], [80, 170, 255], [200, 200, 0],
    [255, 0, 170], [170, 0, 255], [0, 255, 170], [60, 220, 60], [120, 0, 0], [230, 60, 60], [255, 120, 120],
    [150, 70, 90], [255, 255, 0], [0, 80, 160], [255, 210, 80], [60, 160, 160],
], dtype=torch.float32) / 255


def colorize(labels: torch.Tensor) -> torch.Tensor:
    """[N,H,W] labels -> [N,3,H,W] colours."""
    return PALETTE[labels.long()].permute(0, 3, 1, 2)
