"""`distilswap pairs convert`: a version-1 pairs data set (one safetensors file of raw uint8 tensors per shard)
rewritten in the current format (facekit/pairs.py). The old folder is only read."""
from __future__ import annotations

from pathlib import Path

from safetensors import safe_open
from tqdm import tqdm

from facekit.errors import UserError
from facekit.files import read_json
from facekit.pairs import (FORMAT, VERSION, check_destination, claim, finished_shards, read_progress, shard_name,
                           write_json, write_shard)


def convert_v1(root: str | Path, out: str | Path, image_codec: str = "png") -> dict:
    """Every finished version-1 shard, pair for pair, keeping shard numbers, drops and the manifest's settings.
    Resumable: shards already converted are kept."""
    root, out = Path(root), Path(out)
    path = root / "manifest.json"
    if not path.is_file():
        raise UserError(f"{root} is not a pairs data set (no manifest.json)")
    old = read_json(path, "regenerate the version-1 pairs, or write new ones with `distilswap pairs generate`")
    if old.get("format") != FORMAT or old.get("version") != 1:
        raise UserError(f"{path}: not a version-1 {FORMAT} data set (version {old.get('version')!r})")
    if out.resolve() == root.resolve():
        raise UserError("--out must be a new folder: the version-1 data set is read, never changed")
    check_destination(out, old["total_pairs"], old["shard_size"])
    manifest = {**old, "version": VERSION, "image_codec": image_codec, "converted_from": str(root.resolve())}
    claim(out, manifest)
    progress_path = out / "progress" / "rank-00000.json"
    mine = read_progress(progress_path) if progress_path.is_file() else {"shards": {}}
    todo = _v1_shards(root)
    converted = finished_shards(out)
    total_bytes = v1_bytes = pairs = 0
    for name, info in tqdm(sorted(todo.items()), desc="convert", unit="shard"):
        shard = root / "shards" / f"{name}.safetensors"
        v1_bytes += shard.stat().st_size
        if name in converted:
            total_bytes += converted[name].get("bytes", 0)
            pairs += converted[name]["pairs"]
            continue
        try:
            with safe_open(str(shard), "pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:
            raise UserError(f"{shard} is damaged ({type(err).__name__}); regenerate it with the version that wrote it, "
                            "or delete it and convert the rest") from None
        index = int(name.split("-")[1])
        size = write_shard(out, index, tensors, manifest)
        mine["shards"][shard_name(index)] = {"pairs": int(tensors["pair_index"].numel()), "bytes": size,
                                             "dropped": info.get("dropped", [])}
        write_json(progress_path, mine)
        total_bytes += size
        pairs += int(tensors["pair_index"].numel())
    return {"pairs": pairs, "shards": len(todo), "bytes": total_bytes, "v1_bytes": v1_bytes}


def _v1_shards(root: Path) -> dict[str, dict]:
    done = {}
    for progress in sorted((root / "progress").glob("rank-*.json")):
        for name, info in read_progress(progress)["shards"].items():
            if (root / "shards" / f"{name}.safetensors").is_file():
                done[name] = info
    if not done:
        raise UserError(f"{root}: no finished shards to convert")
    return done
