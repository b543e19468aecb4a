"""The paired data set the student learns from: its format, writer and reader (teacher/pairs.py generates it,
facekit/pair_stream.py streams it).

FORMAT (version 2), the contract between teachers and distillation; any teacher may write it:

    ROOT/manifest.json            {"format": "distilswap-pairs", "version": 2, "image_size": S, "image_codec": "png",
                                   "total_pairs": N, "shard_size": K, "num_shards": ceil(N/K), "seed": ...,
                                   "teacher": {"kind": ..., "snapshots": [{"id", "fraction"}, ...]},
                                   "sampling": {...teacher settings...}}
    ROOT/progress/rank-RRRRR.json {"shards": {"shard-000000": {"pairs": n, "bytes": b, "dropped": [{"pair": i, "reason"}]}}}
                                   the finished shards, as recorded by the process (rank) that wrote them
    ROOT/shards/shard-NNNNNN.tar  a WebDataset shard: per pair, keyed by its 9-digit pair index,
        KEY.source.png KEY.target.png KEY.swap.png   RGB uint8 (lossless; .webp when image_codec is webp)
        KEY.mask.png                                 grey: 255 where the swap may differ from the target
        KEY.truth.png                                optional: the exact swap (synthetic world)
        KEY.json                                     {"pair_index", "identity", "snapshot", "snapshot_id", "fraction",
                                                      "id_similarity"} (id_similarity = cos(D_I(source), D_I(swap)))
    ROOT/index/shard-NNNNNN.jsonl the same JSON records, one line per pair, plus "shard": the metadata index, so
                                   splits, quality scores and reweighting never decode an image, and opening a data
                                   set reads one small file per shard.

A shard only counts once it is listed in a progress file; its tar and index are written to temporary names,
fsynced and renamed first, so a killed or out-of-space run leaves no half-written shard, and a rerun with the
same settings regenerates exactly the missing shards (every shard is a pure function of the seed and its index).
Shards are spread over torchrun ranks by index (shard k belongs to rank k mod WORLD_SIZE). Version 1 (one
safetensors file of raw tensors per shard) is converted with `distilswap pairs convert`.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

from facekit.errors import UserError
from facekit.files import atomic_write, atomic_write_text, read_json

FORMAT = "distilswap-pairs"
VERSION = 2
IMAGE_KEYS = ("source", "target", "swap", "mask", "truth")
RECORD_KEYS = ("pair_index", "identity", "snapshot", "snapshot_id", "fraction", "id_similarity")
CODECS = {"png": (".png", [cv2.IMWRITE_PNG_COMPRESSION, 3]), "webp": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])}


# --- format -----------------------------------------------------------------------------------------
def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def shard_path(root: str | Path, name: str) -> Path:
    return Path(root) / "shards" / f"{name}.tar"


def index_path(root: str | Path, name: str) -> Path:
    return Path(root) / "index" / f"{name}.jsonl"


def clear_temporaries(root: str | Path, name: str) -> None:
    """Remove what a writer killed while writing shard `name` left behind (atomic_write's hidden temporaries)."""
    for folder, suffix in (("shards", ".tar"), ("index", ".jsonl")):
        for temp in (Path(root) / folder).glob(f".{name}.*{suffix}"):
            temp.unlink(missing_ok=True)


def pair_key(pair_index: int) -> str:
    return f"{int(pair_index):09d}"


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))  # unique temporaries: ranks may race


def write_shard(root: Path, index: int, pairs: dict[str, torch.Tensor], manifest: dict) -> int:
    """Atomically write one shard and its index lines; images as float [0,1] or uint8 [n,C,S,S]. Returns the
    shard's size in bytes. Raises UserError on a full disk."""
    name = shard_name(index)
    path = shard_path(root, name)
    ext, params = CODECS[manifest.get("image_codec", "png")]
    snapshots = manifest["teacher"]["snapshots"]
    records = []
    for row in range(int(pairs["pair_index"].numel())):
        snapshot = int(pairs["snapshot"][row])
        # a data set's person, or (the synthetic world, every source a new person) the pair itself
        identity = pairs["source_identity"][row] if "source_identity" in pairs else str(int(pairs["pair_index"][row]))
        records.append({"pair_index": int(pairs["pair_index"][row]), "identity": identity,
                        "snapshot": snapshot, "snapshot_id": snapshots[snapshot]["id"],
                        "fraction": float(pairs["fraction"][row]), "id_similarity": float(pairs["id_similarity"][row])})
    images = {k: _to_uint8(v) for k, v in pairs.items() if k in IMAGE_KEYS}

    def tar(temp: Path) -> None:
        with tarfile.open(temp, "w", format=tarfile.USTAR_FORMAT) as out:
            for row, record in enumerate(records):
                key = pair_key(record["pair_index"])
                for kind, batch in images.items():
                    _add(out, f"{key}.{kind}{ext}", _encode(batch[row], ext, params))
                _add(out, f"{key}.json", json.dumps(record, sort_keys=True).encode())

    try:
        for folder in ("shards", "index"):
            (Path(root) / folder).mkdir(parents=True, exist_ok=True)
        atomic_write(path, tar)
        lines = "".join(json.dumps({**record, "shard": name}, sort_keys=True) + "\n" for record in records)
        atomic_write_text(index_path(root, name), lines)
    except OSError as err:
        raise UserError(f"could not write {path.name} ({err.strerror or err}); free space and rerun the same "
                        "command to resume (finished shards are kept)") from None
    return path.stat().st_size


def _add(out: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    out.addfile(info, io.BytesIO(data))


def _encode(image: torch.Tensor, ext: str, params: list[int]) -> bytes:
    array = image.permute(1, 2, 0).numpy()
    array = array[:, :, 0] if array.shape[2] == 1 else np.ascontiguousarray(array[:, :, ::-1])  # cv2 is BGR
    ok, data = cv2.imencode(ext, array, params)
    if not ok:
        raise UserError(f"could not encode a {ext} image")
    return data.tobytes()


def _decode(data: bytes, name: str) -> torch.Tensor:
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError(f"{name}: not a decodable image")
    array = array[:, :, None] if array.ndim == 2 else array[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.contiguous()
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise UserError(f"{root} is not a pairs data set (no manifest.json): create one with `distilswap pairs generate`")
    manifest = read_json(path, "write the pairs again with `distilswap pairs generate` into a new --out")
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not a {FORMAT} manifest (format {manifest.get('format')!r})")
    if manifest.get("version") == 1:
        raise UserError(f"{root} is a version-1 pairs data set: convert it with `distilswap pairs convert {root} --out NEW`")
    if manifest.get("version") != VERSION:
        raise UserError(f"{path}: pairs format version {manifest.get('version')!r} is unknown to this distilswap "
                        f"(it reads version {VERSION})")
    if manifest.get("image_codec", "png") not in CODECS:
        raise UserError(f"{path}: unknown image codec {manifest.get('image_codec')!r} (known: {', '.join(CODECS)})")
    return manifest


def finished_shards(root: str | Path) -> dict[str, dict]:
    """Shards listed as finished by any rank (and present on disk)."""
    done = {}
    for progress in sorted((Path(root) / "progress").glob("rank-*.json")):
        for name, info in read_progress(progress)["shards"].items():
            if shard_path(root, name).is_file():
                done[name] = info
    return done


def read_progress(path: Path) -> dict:
    """One rank's record of its finished shards."""
    progress = read_json(path, "delete it and rerun `distilswap pairs generate`: that rank's shards are written again")
    if not isinstance(progress.get("shards"), dict):
        raise UserError(f"{path}: damaged, no 'shards' record; delete it and rerun `distilswap pairs generate`")
    return progress


def shard_intact(root: str | Path, name: str, info: dict) -> bool:
    """The shard and its index are there at the size its writer recorded (a cheap check, no decoding)."""
    path = shard_path(root, name)
    return path.is_file() and path.stat().st_size == info.get("bytes") and index_path(root, name).is_file()


def read_index(root: str | Path, shards: list[str] | None = None) -> list[dict]:
    """The metadata of every pair of the finished shards (or of `shards`), in shard order: one small file per
    shard, no image decoded."""
    rows = []
    for name in sorted(finished_shards(root)) if shards is None else shards:
        path = index_path(root, name)
        try:
            rows += [json.loads(line) for line in path.read_text().splitlines() if line]
        except (OSError, ValueError) as err:
            raise UserError(f"{path} is damaged ({type(err).__name__}): delete {shard_path(root, name).name} and rerun "
                            "`distilswap pairs generate` with the same settings to write it again") from None
    return rows


class ShardMismatch(UserError):
    """A readable shard that does not belong to this data set (another resolution): refused, never skipped."""


def read_shard(path: str | Path, wanted: set[int] | None = None, size: int | None = None) -> Iterator[dict]:
    """The pairs of one shard (or only those whose pair index is in `wanted`; the others are not decoded), in
    order: image tensors uint8 [C,S,S] under their kind, plus the JSON record under "json". Reads the tar as a
    stream (WebDataset's layout: the members of one key are adjacent). With `size`, an image of another size
    raises ShardMismatch."""
    path = Path(path)
    current: dict = {}
    key = None
    try:
        with tarfile.open(path, "r|") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                member_key, _, rest = member.name.partition(".")
                if key is not None and member_key != key:
                    if current:
                        yield current
                    current = {}
                key = member_key
                if wanted is not None and int(member_key) not in wanted:
                    continue
                data = archive.extractfile(member).read()
                kind = rest.split(".")[0]
                current[kind] = json.loads(data) if rest == "json" else _decode(data, member.name)
                if size is not None and kind != "json" and tuple(current[kind].shape[1:]) != (size, size):
                    raise ShardMismatch(f"{path} holds {current[kind].shape[2]}x{current[kind].shape[1]} images but its "
                                        f"data set is {size}²: the shard belongs to another data set")
    except ShardMismatch:
        raise
    except (tarfile.TarError, OSError, ValueError, EOFError) as err:
        raise UserError(f"{path} is damaged ({type(err).__name__}: {err}): delete it and rerun "
                        "`distilswap pairs generate` with the same settings to write it again") from None
    if current:
        yield current


class PairDataset(torch.utils.data.Dataset):
    """All finished pairs of a data set, by position (sequential access is cheap: a shard is decoded whole and
    kept until another is asked for). Item: source/target/swap float [3,S,S] in [0,1], mask [1,S,S], truth when
    present, and the record's fields (id_similarity, fraction: floats; snapshot, pair_index: ints; identity,
    snapshot_id: str). For training at scale, facekit.pair_stream streams instead."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest = read_manifest(root)
        done = finished_shards(root)
        self.shards = sorted(done)
        for name in self.shards:
            if not shard_intact(root, name, done[name]):
                raise UserError(f"{shard_path(root, name)} is damaged: delete it and rerun `distilswap pairs generate` "
                                "with the same settings to write it again")
        self.records = read_index(root, self.shards)
        self._cache: tuple[str, dict[int, dict]] | None = None  # the last shard read, by pair index

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int) -> dict:
        record = self.records[item]
        name = record["shard"]
        if self._cache is None or self._cache[0] != name:
            pairs = read_shard(shard_path(self.root, name), size=self.manifest["image_size"])
            self._cache = (name, {int(p["json"]["pair_index"]): p for p in pairs})
        pair = self._cache[1].get(int(record["pair_index"]))
        if pair is None:
            raise UserError(f"{shard_path(self.root, name)} lacks pair {record['pair_index']} that its index lists: "
                            "delete the shard and rerun `distilswap pairs generate`")
        return sample_from(pair)


def sample_from(pair: dict) -> dict:
    """A decoded pair (read_shard) as a training sample: images float in [0,1], record fields as scalars."""
    sample = {k: pair[k].float() / 255 for k in IMAGE_KEYS if k in pair}
    record = pair["json"]
    sample.update({"pair_index": torch.tensor(record["pair_index"]), "snapshot": torch.tensor(record["snapshot"]),
                   "fraction": torch.tensor(record["fraction"]), "id_similarity": torch.tensor(record["id_similarity"]),
                   "identity": record["identity"], "snapshot_id": record["snapshot_id"]})
    return sample


def check_destination(root: str | Path, total: int, shard_size: int) -> None:
    """A pairs data set of at least one pair goes into a new folder, an empty one or an earlier pairs run."""
    root = Path(root)
    if total < 1 or shard_size < 1:
        raise UserError(f"--total and --shard-size must be at least 1, got {total} and {shard_size}")
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} is a file; --out must be a folder for the pairs data set")
    if (root / "manifest.json").is_file():
        return
    foreign = [p.name for p in root.iterdir() if p.name not in ("progress", "shards", "index") and not p.name.startswith(".")] \
        if root.is_dir() else []
    if foreign:
        raise UserError(f"{root} already holds other files ({', '.join(sorted(foreign)[:3])}), not a pairs data set; "
                        "choose an empty or new --out")


def claim(root: Path, manifest: dict) -> None:
    """Start a data set, or check that the one under root was started with these very settings."""
    path = root / "manifest.json"
    if path.is_file():
        existing = read_json(path, f"choose another --out, or delete {root} and run the command again")
        if existing != json.loads(json.dumps(manifest)):
            changed = sorted(k for k in manifest if existing.get(k) != json.loads(json.dumps(manifest[k])))
            raise UserError(f"{root} holds a pairs run with different settings ({', '.join(changed)}); "
                            "rerun with the same settings to resume, or choose another --out")
        return
    for folder in ("progress", "shards", "index"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    write_json(path, manifest)
