"""The paired data set the student learns from: its format, writer and reader (teacher/pairs.py generates it).

FORMAT (version 1), the contract between teachers and distillation; any teacher may write it:

    ROOT/manifest.json            {"format": "distilswap-pairs", "version": 1, "image_size": S,
                                   "total_pairs": N, "shard_size": K, "num_shards": ceil(N/K), "seed": ...,
                                   "teacher": {"kind": ..., "snapshots": [{"id", "fraction"}, ...]},
                                   "sampling": {...teacher settings...}}
    ROOT/progress/rank-RRRRR.json {"shards": {"shard-000000": {"pairs": n, "dropped": [{"pair": i, "reason"}]}}}
                                   the finished shards, as recorded by the process (rank) that wrote them
    ROOT/shards/shard-NNNNNN.safetensors, one per shard, tensors with a leading pair dimension n ≤ K:
        source, target, swap   uint8 [n,3,S,S]  RGB; source/target are aligned face crops, swap the teacher's
        mask                   uint8 [n,1,S,S]  1 where the swap may differ from the target (blend mask)
        id_similarity          float32 [n]      cos(D_I(source), D_I(swap))
        fraction               float32 [n]      training fraction of the teacher snapshot that made the swap
        snapshot               int64 [n]        index into manifest["teacher"]["snapshots"]
        pair_index             int64 [n]        global pair number (0..N-1): no pair appears twice
        truth                  uint8 [n,3,S,S]  optional: the exact swap, when the faces come from the synthetic world
      metadata: "manifest" (the manifest JSON, so a shard is self-describing).

A shard only counts once it is listed in a progress file; it is written to a temporary name, fsynced and
renamed, so a killed or out-of-space run leaves no half-written shard, and a rerun with the same settings
regenerates exactly the missing shards (every shard is a pure function of the seed and its index).
Shards are spread over torchrun ranks by index (shard k belongs to rank k mod WORLD_SIZE).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from facekit.errors import UserError
from facekit.imageio import atomic_write_text, durable_replace

FORMAT = "distilswap-pairs"
VERSION = 1
IMAGE_KEYS = ("source", "target", "swap", "mask", "truth")


# --- format -----------------------------------------------------------------------------------------
def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))  # unique temporaries: ranks may race


def write_shard(root: Path, index: int, pairs: dict[str, torch.Tensor], manifest: dict, writer: str = "") -> Path:
    """Atomically write one shard; images as float [0,1] or uint8. Raises UserError on a full disk.
    `writer` names the temporary file, so a restarted writer can clear its own leftovers."""
    path = Path(root) / "shards" / f"{shard_name(index)}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: _to_uint8(v) if k in IMAGE_KEYS else v.contiguous() for k, v in pairs.items()}
    tmp = path.with_name(path.name + f".tmp-{writer or os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={"manifest": json.dumps(manifest, sort_keys=True)})
        durable_replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {path.name} ({err.strerror or err}); free space and rerun the same "
                        "command to resume (finished shards are kept)") from None
    return path


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.contiguous()
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise UserError(f"{root} is not a pairs data set (no manifest.json): create one with `distilswap pairs generate`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise UserError(f"{path}: not a {FORMAT} v{VERSION} manifest")
    return manifest


def finished_shards(root: str | Path) -> dict[str, dict]:
    """Shards listed as finished by any rank (and present on disk)."""
    done = {}
    for progress in sorted((Path(root) / "progress").glob("rank-*.json")):
        for name, info in json.loads(progress.read_text())["shards"].items():
            if (Path(root) / "shards" / f"{name}.safetensors").is_file():
                done[name] = info
    return done


def shard_length(path: Path) -> int | None:
    """Pairs in a shard, or None when its header cannot be read (damaged)."""
    try:
        with safe_open(str(path), "pt") as f:
            return int(f.get_slice("pair_index").get_shape()[0])
    except Exception:
        return None


class PairDataset(torch.utils.data.Dataset):
    """All finished pairs of a data set. Item: source/target/swap float [3,S,S] in [0,1], mask [1,S,S],
    id_similarity, fraction (floats), snapshot, pair_index (ints), snapshot_id (str)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest = read_manifest(root)
        self.shards = sorted(finished_shards(root))
        self.index = []
        for name in self.shards:
            count = shard_length(self._path(name))
            if count is None:
                raise UserError(f"{self._path(name)} is damaged: delete it and rerun `distilswap pairs generate` "
                                "with the same settings to write it again")
            self.index += [(name, i) for i in range(count)]
        self._cache: tuple[str, dict[str, torch.Tensor]] | None = None

    def _path(self, name: str) -> Path:
        return self.root / "shards" / f"{name}.safetensors"

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        name, row = self.index[item]
        if self._cache is None or self._cache[0] != name:  # shards are read whole: sequential access is cheap
            try:
                with safe_open(str(self._path(name)), "pt") as f:
                    self._cache = (name, {k: f.get_tensor(k) for k in f.keys()})
            except Exception as err:  # truncated or overwritten after it was finished
                raise UserError(f"{self._path(name)} is damaged ({type(err).__name__}): delete it and rerun "
                                "`distilswap pairs generate` with the same settings to write it again") from None
        data = self._cache[1]
        item = {k: (v[row].float() / 255 if k in IMAGE_KEYS else v[row]) for k, v in data.items()}
        item["snapshot_id"] = self.manifest["teacher"]["snapshots"][int(item["snapshot"])]["id"]
        return item


def check_destination(root: str | Path, total: int, shard_size: int) -> None:
    """A pairs data set of at least one pair goes into a new folder, an empty one or an earlier pairs run."""
    root = Path(root)
    if total < 1 or shard_size < 1:
        raise UserError(f"--total and --shard-size must be at least 1, got {total} and {shard_size}")
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} is a file; --out must be a folder for the pairs data set")
    if (root / "manifest.json").is_file():
        return
    foreign = [p.name for p in root.iterdir() if p.name not in ("progress", "shards") and not p.name.startswith(".")] \
        if root.is_dir() else []
    if foreign:
        raise UserError(f"{root} already holds other files ({', '.join(sorted(foreign)[:3])}), not a pairs data set; "
                        "choose an empty or new --out")


def claim(root: Path, manifest: dict) -> None:
    """Start a data set, or check that the one under root was started with these very settings."""
    path = root / "manifest.json"
    if path.is_file():
        existing = json.loads(path.read_text())
        if existing != json.loads(json.dumps(manifest)):
            changed = sorted(k for k in manifest if existing.get(k) != json.loads(json.dumps(manifest[k])))
            raise UserError(f"{root} holds a pairs run with different settings ({', '.join(changed)}); "
                            "rerun with the same settings to resume, or choose another --out")
        return
    (root / "progress").mkdir(parents=True, exist_ok=True)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    write_json(path, manifest)
