"""The on-disk face data set shared by real photos and the synthetic world.

    ROOT/dataset.json  {"format": "distilswap-faces/1", "resolution": int, "aligned": bool, "num_samples": int,
                        optional "embedding_space": str, optional "alignment": "ffhq"|"arcface"|"given" (photos)}
    ROOT/meta.jsonl    one JSON object per sample: {"image": "images/<identity>/<name>.png", "identity": str,
                        "split": "train"|"test", "landmarks5": [[x, y] x5] (pixels) or null,
                        optional "labels": "labels/<identity>/<name>.png" (uint8 BiSeNet class map),
                        optional "gaze": [pitch, yaw], optional "attributes": {...}}
    ROOT/embeddings.npy  optional float32 [num_samples, D], row i = meta line i (identity embeddings cached
                        so experts are not re-run every epoch)

`FolderDataset.from_images` turns a plain folder of photos (flat FFHQ-style, or `<identity>/*.jpg` VGGFace2-
style) into this format: detect, align, write PNG crops; it resumes where it stopped and reports bad files.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from facekit.faces.align import estimate_transform, transform_points, warp_face
from facekit.errors import UserError
from facekit.files import atomic_write, read_json
from facekit.faces.imageio import list_images, read_image, write_image

FORMAT = "distilswap-faces/1"
SPLITS = ("train", "test")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: missing; not a {FORMAT} data set (build one from photos with `distilswap faces "
                        "--photos DIR --out DIR`)")
    return read_json(path, "build the data set again (`distilswap faces` or `distilswap world dataset`)")


def _check_record(record: Any, where: str) -> dict:
    if not isinstance(record, dict) or not isinstance(record.get("image"), str) or not isinstance(record.get("identity"), str):
        raise UserError(f"{where}: each line needs string 'image' and 'identity' fields")
    if record.get("split", "train") not in SPLITS:
        raise UserError(f"{where}: split must be 'train' or 'test', got {record.get('split')!r}")
    landmarks = record.get("landmarks5")
    if landmarks is not None and np.asarray(landmarks, dtype=np.float64).shape != (5, 2):
        raise UserError(f"{where}: landmarks5 must be 5 [x, y] pairs or null")
    if record.get("gaze") is not None and len(record["gaze"]) != 2:
        raise UserError(f"{where}: gaze must be [pitch, yaw]")
    return record


def read_meta(root: Path) -> list[dict]:
    path = root / "meta.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: missing; not a {FORMAT} data set")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: not valid JSON ({err})") from None
            records.append(_check_record(record, f"{path}:{number}"))
    return records


def write_dataset_json(root: Path, resolution: int, aligned: bool, num_samples: int, **extra: Any) -> None:
    info = {"format": FORMAT, "resolution": int(resolution), "aligned": bool(aligned), "num_samples": int(num_samples), **extra}
    atomic_write(root / "dataset.json", lambda temp: temp.write_text(json.dumps(info, indent=1) + "\n"))


class FolderDataset(Dataset):
    """Samples as dicts: "image" float [3,H,W] in [0,1], "identity", "index" (row in meta.jsonl), and when the
    data set has them "labels" long [H,W], "gaze" float [2], "landmarks5" float [5,2], "embedding" float [D].

    A sample whose file is unreadable is skipped (the next good one is returned) and remembered in
    `bad_files` (per process: with DataLoader workers, run `check()` first to get the full list at once).
    """

    def __init__(self, root: str | Path, split: str | None = None, resolution: int | None = None):
        self.root = Path(root)
        self.info = _read_json(self.root / "dataset.json")
        if self.info.get("format") != FORMAT:
            raise UserError(f"{self.root / 'dataset.json'}: format is {self.info.get('format')!r}, expected {FORMAT!r}")
        if split is not None and split not in SPLITS:
            raise UserError(f"split must be one of {SPLITS}, got {split!r}")
        records = read_meta(self.root)
        self.indices = [i for i, r in enumerate(records) if split is None or r.get("split", "train") == split]
        self.records = records
        self.resolution = int(resolution or self.info["resolution"])
        self.embeddings = self._load_embeddings(len(records))
        self.embedding_space = self.info.get("embedding_space")
        self.bad_files: dict[str, str] = {}

    def _load_embeddings(self, count: int) -> np.ndarray | None:
        path = self.root / "embeddings.npy"
        if not path.is_file():
            return None
        embeddings = np.load(path, allow_pickle=False, mmap_mode="r")
        if embeddings.ndim != 2 or embeddings.shape[0] != count:
            raise UserError(f"{path}: {embeddings.shape[0]} rows for {count} samples; delete it to recompute")
        return embeddings

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def identities(self) -> list[str]:
        return [self.records[i]["identity"] for i in self.indices]

    def _load(self, row: int) -> dict[str, Any]:
        record = self.records[row]
        image = read_image(self.root / record["image"])
        h, w = image.shape[:2]
        size = self.resolution
        sample: dict[str, Any] = {"identity": record["identity"], "index": row}
        if (h, w) != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if h > size else cv2.INTER_CUBIC)
        sample["image"] = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
        if record.get("landmarks5") is not None:
            scale = np.array([size / w, size / h], dtype=np.float32)
            sample["landmarks5"] = torch.from_numpy(np.asarray(record["landmarks5"], np.float32) * scale)
        if record.get("labels"):
            labels = _read_labels(self.root / record["labels"])
            if labels.shape != (size, size):
                labels = cv2.resize(labels, (size, size), interpolation=cv2.INTER_NEAREST)
            sample["labels"] = torch.from_numpy(labels.astype(np.int64))
        if record.get("gaze") is not None:
            sample["gaze"] = torch.tensor(record["gaze"], dtype=torch.float32)
        if self.embeddings is not None:
            sample["embedding"] = torch.from_numpy(np.array(self.embeddings[row], dtype=np.float32))
        return sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        for offset in range(len(self.indices)):
            row = self.indices[(index + offset) % len(self.indices)]
            try:
                return self._load(row)
            except UserError as err:
                path = self.records[row]["image"]
                if path not in self.bad_files:
                    print(f"skipping a bad sample: {err}", file=sys.stderr)
                self.bad_files[path] = str(err)
        raise UserError(f"{self.root}: no readable sample left ({len(self.bad_files)} bad files)")

    def check(self) -> dict[str, str]:
        """Read every sample once; returns {file: problem} for the bad ones (also kept in bad_files)."""
        for row in tqdm(self.indices, desc="checking", unit="img"):
            try:
                self._load(row)
            except UserError as err:
                self.bad_files[self.records[row]["image"]] = str(err)
        return dict(self.bad_files)

    @classmethod
    def from_images(
        cls,
        source: str | Path,
        cache: str | Path,
        resolution: int = 256,
        aligned: bool = False,
        style: str = "ffhq",
        detector: Any = None,
        embedder: Callable[[torch.Tensor], Any] | None = None,
        test_fraction: float = 0.05,
        batch_size: int = 16,
    ) -> "FolderDataset":
        """Build (or resume) the cache at `cache` from the photos under `source` and open it.

        Identities: `<identity>/<name>.jpg` folders, or one identity per file for a flat folder. Unaligned
        photos are detected (largest face) and aligned (`style`: "ffhq" for the teacher, "arcface" for
        ArcFace/student crops); `aligned=True` photos are only resized. `embedder` (e.g. a frozen
        IRSEArcFace, returning (z, F) or z) fills embeddings.npy with embedder(stored crop), exactly what a
        training loop would compute on the fly. The split is a stable hash of the identity.
        """
        source, cache = Path(source), Path(cache)
        files = list_images(source)
        if not files:
            raise UserError(f"{source}: no images found (jpg, png, webp, ...)")
        cache.mkdir(parents=True, exist_ok=True)
        meta_path = cache / "meta.jsonl"
        records = read_meta(cache) if meta_path.is_file() else []
        alignment = "given" if aligned else style
        if records:
            _check_same_crops(cache, resolution, alignment)
        else:  # recorded first, so a resumed run can tell whether its crops would match these
            write_dataset_json(cache, resolution, True, 0, alignment=alignment)
        done = {r["source"] for r in records if "source" in r}
        bad: dict[str, str] = {}
        if not aligned and detector is None:
            from facekit.faces.detect import DlibDetector

            detector = DlibDetector()
        with meta_path.open("a") as meta:
            for file in tqdm(files, desc="aligning faces", unit="img"):
                relative = file.relative_to(source).as_posix()
                if relative in done:
                    continue
                try:
                    record = _prepare_one(file, relative, cache, resolution, aligned, style, detector, test_fraction)
                except UserError as err:
                    bad[relative] = str(err)
                    continue
                meta.write(json.dumps(record) + "\n")
                meta.flush()
                records.append(record)
        extra = {"alignment": alignment}
        if embedder is not None:
            extra["embedding_space"] = _cache_embeddings(cache, records, embedder, batch_size)
        write_dataset_json(cache, resolution, True, len(records), **extra)
        if bad:
            report = cache / "bad_files.txt"
            report.write_text("".join(f"{name}\t{problem}\n" for name, problem in bad.items()))
            print(f"{len(bad)} of {len(files)} images skipped (listed in {report}):", file=sys.stderr)
            for name, problem in list(bad.items())[:10]:
                print(f"  {problem}", file=sys.stderr)
        if not records:
            raise UserError(f"{source}: none of the {len(files)} images gave a usable face (see {cache / 'bad_files.txt'})")
        dataset = cls(cache)
        dataset.bad_files.update(bad)
        return dataset


def _check_same_crops(cache: Path, resolution: int, alignment: str) -> None:
    """A resumed build must cut its crops as the first run did: mixed sizes or templates would pass silently."""
    path = cache / "dataset.json"
    if not path.is_file():
        return
    info = _read_json(path)
    was = (info.get("resolution"), info.get("alignment", alignment))  # caches from before "alignment" was recorded
    if was != (resolution, alignment):
        raise UserError(f"{cache} holds crops of {was[0]} px aligned by {was[1]!r}; asked for {resolution} px by "
                        f"{alignment!r}: resume with the first settings or choose another --out")


def _read_labels(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            labels = np.asarray(image)
    except OSError as err:
        raise UserError(f"{path}: unreadable label map ({err})") from None
    if labels.ndim != 2 or labels.max(initial=0) > 18:
        raise UserError(f"{path}: expected a single-channel map of the 19 BiSeNet classes")
    return labels


def _split_of(identity: str, test_fraction: float) -> str:
    bucket = int.from_bytes(hashlib.sha1(identity.encode()).digest()[:4], "big") / 2**32
    return "test" if bucket < test_fraction else "train"


def _prepare_one(
    file: Path, relative: str, cache: Path, resolution: int, aligned: bool, style: str, detector: Any, test_fraction: float
) -> dict:
    parts = Path(relative).parts
    identity = parts[-2] if len(parts) > 1 else Path(relative).stem
    image = read_image(file)
    if aligned:
        crop = cv2.resize(image, (resolution, resolution), interpolation=cv2.INTER_AREA)
        landmarks = None
    else:
        faces = detector.detect(image)
        if not faces:
            raise UserError(f"{file}: no face found")
        face = faces[0]
        if min(face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1]) < 0.15 * resolution:
            raise UserError(f"{file}: the face is too small for a {resolution}² crop")
        matrix = estimate_transform(face.landmarks5, resolution, "similarity", style)
        crop = warp_face(image, matrix, resolution)
        landmarks = transform_points(face.landmarks5, matrix).round(2).tolist()
    name = Path(relative).with_suffix("").as_posix().replace("/", "__")
    target = f"images/{identity}/{name}.png"
    write_image(cache / target, crop)
    return {"image": target, "identity": identity, "split": _split_of(identity, test_fraction), "landmarks5": landmarks, "source": relative}


def _cache_embeddings(cache: Path, records: Sequence[dict], embedder: Callable, batch_size: int) -> str:
    path = cache / "embeddings.npy"
    space = getattr(embedder, "embedding_space", "unknown")
    info_path = cache / "dataset.json"
    old_space = json.loads(info_path.read_text()).get("embedding_space") if info_path.is_file() else None
    rows = np.load(path, allow_pickle=False) if path.is_file() and old_space == space else np.zeros((0, 0), np.float32)
    if rows.shape[0] > len(records):
        rows = np.zeros((0, 0), np.float32)
    chunks = [rows] if rows.shape[0] else []
    todo = list(records[rows.shape[0]:])
    parameters = list(embedder.parameters()) if isinstance(embedder, torch.nn.Module) else []
    device = parameters[0].device if parameters else torch.device("cpu")
    with torch.no_grad():
        for start in tqdm(range(0, len(todo), batch_size), desc="identity embeddings", unit="batch"):
            batch = [read_image(cache / r["image"]) for r in todo[start:start + batch_size]]
            images = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div(255).to(device)
            out = embedder(images)
            chunks.append((out[0] if isinstance(out, tuple) else out).float().cpu().numpy())
    embeddings = np.concatenate(chunks).astype(np.float32)
    atomic_write(path, lambda temp: _save_npy(temp, embeddings))
    return space


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as handle:
        np.save(handle, array)
