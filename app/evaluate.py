"""`distilswap evaluate`: swappers on real faces, scored the way face-swap papers score them, by judges that no
swapper here trained against (app/judges.py).

Every (source, target) pair is swapped by each model; the result is scored for identity (cosine of dlib's
descriptors to the source and to the target, and top-1 retrieval of the right source among all sources), pose
and expression kept from the target, and the background kept outside the target's face. Two built-in models
frame the table: `target` returns the target unchanged (the floor: identity of the target, retrieval at
chance) and `paste` pastes the source's own face onto the target (identity of the source, but the pose and
expression of the source). Per-pair results are cached under OUT/cache/v<SCORES_VERSION>, so a rerun resumes.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from facekit.faces.detect import Face
from facekit.errors import UserError
from facekit.files import atomic_write, atomic_write_text, read_json

log = logging.getLogger(__name__)

# (source image, source face, target image, target face) -> result image, all HxWx3 uint8 RGB
Swap = Callable[[np.ndarray, Face, np.ndarray, Face], np.ndarray]
# Bumped when a change alters what a cached pair would score; caches of older versions are left in place, unread.
# 2: video frames turned by their whole display matrix (a rotated clip's frames were scored sideways before).
SCORES_VERSION = 2
METRICS = ("id_cos_source", "id_cos_target", "retrieval_top1", "pose_error_deg", "expression_error",
           "background_l1", "background_psnr")


@dataclass(frozen=True)
class EvalPair:
    source: Path
    target: Path
    frame: int | None = None  # a frame of a target video

    @property
    def key(self) -> str:
        text = f"{self.source.resolve()}|{self.target.resolve()}|{self.frame}"
        return f"{self.source.stem}__{self.target.stem}{'' if self.frame is None else f'@{self.frame}'}-" \
               f"{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def list_pairs(sources: str | Path | None, targets: str | Path | None, pairs_csv: str | Path | None,
               frames: int = 8) -> list[EvalPair]:
    """Every source with every target (photos, or `frames` frames spread evenly over each target video), or
    the rows (source, target) of a CSV."""
    from facekit.faces.imageio import IMAGE_SUFFIXES
    from facekit.faces.video import VIDEO_SUFFIXES, count_frames, video_info

    if pairs_csv:
        rows = [r for r in csv.reader(Path(pairs_csv).read_text().splitlines()) if r and not r[0].startswith("#")]
        base = Path(pairs_csv).parent
        source_files = target_files = None
        raw = [(base / r[0].strip(), base / r[1].strip()) for r in rows if len(r) >= 2]
    else:
        if not sources or not targets:
            raise UserError("pass --sources DIR and --targets DIR, or --pairs CSV")
        source_files = _files(sources, IMAGE_SUFFIXES, "source photos")
        target_files = _files(targets, IMAGE_SUFFIXES + VIDEO_SUFFIXES, "target photos or videos")
        raw = [(s, t) for t in target_files for s in source_files]
    pairs = []
    counts: dict[Path, int] = {}  # frames per target video, read once however many sources it is paired with
    for source, target in raw:
        if target.suffix.lower() in VIDEO_SUFFIXES:
            if target not in counts:
                counts[target] = video_info(target).frames or count_frames(target)  # mkv/webm declare no count
            count = counts[target]
            n = min(frames, count)
            picks = sorted({int(round(i * (count - 1) / max(n - 1, 1))) for i in range(n)})
            pairs += [EvalPair(source, target, k) for k in picks]
        else:
            pairs.append(EvalPair(source, target))
    if not pairs:
        raise UserError("no (source, target) pairs to evaluate")
    return pairs


def _files(folder: str | Path, suffixes: Sequence[str], what: str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder of {what}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
    if not files:
        raise UserError(f"{folder}: no {what} ({', '.join(suffixes)})")
    return files


def paste_source(source: np.ndarray, source_face: Face, target: np.ndarray, target_face: Face) -> np.ndarray:
    """The source's own face, aligned onto the target's (the identity ceiling of a swap, and no swap at all)."""
    import cv2

    from facekit.faces.align import estimate_transform, paste_back, transform_points, warp_face

    size = 224
    from_source = estimate_transform(source_face.landmarks5, size, mode="affine")
    crop = warp_face(source, from_source, size)
    mask = np.zeros((size, size), np.float32)
    hull = cv2.convexHull(transform_points(source_face.landmarks68, from_source).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1.0)
    return paste_back(target, crop, estimate_transform(target_face.landmarks5, size, mode="affine"), mask)


def model_swap(model: str | Path, embedder: str | Path | None, detector, use_emap: bool = False,
               pixels: str = "unit", engine: str = "onnxruntime") -> Swap:
    """A student checkpoint, an export folder or a one-shot ONNX swapper as a Swap: each source's identity
    comes from `embedder`; `engine` runs its .onnx (app.swap.open_swapper)."""
    from app.swap import FaceSwapRun, open_swapper
    from facekit.identity import identity_from_image

    if embedder is None:
        raise UserError(f"--model {model}: a swapper model needs --embedder to read each source's identity")
    from facekit.experts.expert_loader import load_embedder

    identity_model = load_embedder(embedder)
    swappers: dict[bytes, object] = {}

    def swap(source: np.ndarray, source_face: Face, target: np.ndarray, target_face: Face) -> np.ndarray:
        key = hashlib.sha256(source.tobytes()).digest()
        if key not in swappers:
            identity = identity_from_image(source, _Fixed([source_face]), identity_model)
            swappers[key] = open_swapper(model, identity, use_emap=use_emap, pixels=pixels, engine=engine)
        return FaceSwapRun(_Fixed([target_face]), swappers[key], face_index=0)(target)[0]

    return swap


class _Fixed:
    """A detector that returns the faces it was given (the evaluation has already found them)."""

    def __init__(self, faces: list[Face]):
        self.faces = faces

    def __call__(self, image: np.ndarray) -> list[Face]:
        return self.faces

    detect = __call__


def evaluate(models: dict[str, Swap], pairs: Sequence[EvalPair], out: str | Path, detector, progress: bool = True,
             sheet_rows: int = 8, recognizers: dict[str, object] | None = None, temporal_frames: int = 16,
             inception=None, engine: str = "onnxruntime") -> dict:
    """Score every model on every pair; writes OUT/results.md, results.json, pairs.csv and sheet.png.
    engine: what ran the models' .onnx files; another engine's rows are cached apart from ONNX Runtime's.
    recognizers: more identity judges (name -> embedder on aligned 112² ArcFace crops), e.g. an insightface
    ArcFace ONNX, scored like dlib's: cosine to the source and top-1 retrieval.
    inception: app.fid.InceptionFeatures, for each model's FID of its face crops against the targets'."""
    from tqdm import tqdm

    from app.judges import DlibRecognizer
    from facekit.faces.detect import landmark_predictor
    from facekit.faces.imageio import write_image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recognizer = DlibRecognizer()
    predictor = landmark_predictor(detector)
    faces = _FaceCache(detector, recognizer, predictor, pairs)
    skipped: list[dict] = []
    usable = []
    for pair in pairs:
        problem = faces.problem(pair)
        if problem:
            skipped.append({"source": str(pair.source), "target": str(pair.target), "frame": pair.frame, "reason": problem})
        else:
            usable.append(pair)
    if not usable:
        raise UserError(f"none of the {len(pairs)} pairs has a face in both photos (first problem: {skipped[0]['reason']})")
    gallery = {path: faces.source(path)[2] for path in dict.fromkeys(p.source for p in usable)}
    judges = {name: _Judge(embedder, {path: faces.source(path)[:2] for path in gallery})
              for name, embedder in (recognizers or {}).items()}
    slugs = {name: _slug(name) for name in models}
    rows: list[dict] = []
    sheet: list[list[np.ndarray]] = []
    features: dict[str, list[np.ndarray]] = {name: [] for name in ["target faces", *models]}
    cache = out / "cache" / (f"v{SCORES_VERSION}" if engine == "onnxruntime" else f"v{SCORES_VERSION}-{engine}")
    for pair in tqdm(usable, desc="evaluate", unit="pair", disable=not progress):
        source, source_face, _ = faces.source(pair.source)
        target, target_face, target_descriptor = faces.target(pair)
        shown = [source, target]
        if inception is not None:  # one feature per pair, computed once per target frame
            target_key = hashlib.sha256(f"{pair.target.resolve()}|{pair.frame}".encode()).hexdigest()[:16]
            features["target faces"].append(_cached_features(
                cache / "target_faces" / f"{target_key}.inception.npy",
                lambda: inception([_face_tile(target, target_face, FID_CROP)])[0]))
        for name, swap in models.items():
            cached = cache / slugs[name] / f"{pair.key}.json"
            result = None
            row = _cached_row(cached)
            # a cached row serves when it has every judge asked for this time (and the features, for FID)
            reusable = bool(row) and all(f"{judge}_cos_source" in row for judge in judges) and (
                inception is None or cached.with_suffix(".inception.npy").is_file())
            if not reusable:
                result = np.ascontiguousarray(swap(source, source_face, target, target_face), dtype=np.uint8)
                row = _score(result, pair, target, target_face, target_descriptor, gallery, recognizer, predictor)
                landmarks5 = row.pop("_landmarks5")
                for judge_name, judge in judges.items():
                    row.update(judge.score(result, landmarks5, pair.source, judge_name))
                row.update({"model": name, "source": str(pair.source), "target": str(pair.target), "frame": pair.frame})
                if inception is not None:  # before the row: a cached row means its features are there too
                    _cached_features(cached.with_suffix(".inception.npy"),
                                     lambda: inception([_face_tile(result, target_face, FID_CROP)])[0], refresh=True)
                atomic_write_text(cached, json.dumps(row))
            if inception is not None:
                features[name].append(np.load(cached.with_suffix(".inception.npy")))
            rows.append(row)
            if len(sheet) < sheet_rows:
                if result is None:
                    result = np.ascontiguousarray(swap(source, source_face, target, target_face), dtype=np.uint8)
                shown.append(result)
        if len(sheet) < sheet_rows:
            sheet.append([_face_tile(image, target_face if i else source_face) for i, image in enumerate(shown)])
    summary = _summary(rows, list(models), len(gallery), [f"{n}_{m}" for n in judges for m in ("cos_source", "retrieval_top1")])
    videos = sorted({(p.source, p.target) for p in usable if p.frame is not None})
    if videos and temporal_frames > 1:
        for name, swap in models.items():
            scores = []
            for source, video in videos:
                score = temporal_stability(swap, faces.source(source)[:2], video, detector, predictor, temporal_frames)
                if score is None:
                    skipped.append({"source": str(source), "target": str(video), "frame": None,
                                    "reason": f"{video.name}: fewer than 2 consecutive frames with a face, "
                                              f"no temporal stability for {name}"})
                else:
                    scores.append(score)
            if scores:
                summary[name].update({k: float(np.mean([v[k] for v in scores])) for k in scores[0]})
    fid = "skipped: no Inception weights given (--inception FILE; nothing is downloaded)"
    if inception is not None:
        from app.fid import frechet_distance

        reference = np.stack(features["target faces"])
        for name in models:
            summary[name]["fid"] = frechet_distance(np.stack(features[name]), reference)
        fid = (f"of {FID_CROP}² face crops against the {len(reference)} target faces' by torchvision Inception-v3 "
               f"pool features ({inception.path.name}; biased upwards below 2048 crops)")
    report = {"models": summary, "pairs": len(usable), "sources": len(gallery), "skipped": skipped,
              "judges": {"identity": "dlib_face_recognition_resnet_model_v1 (128-d), cosine",
                         "pose": "68 landmarks, PnP on a generic 3-D face", "expression": "mouth opening, eye aspect ratios"},
              "fid": fid, "engine": engine}
    atomic_write_text(out / "results.json", json.dumps(report, indent=1))
    _write_csv(out / "pairs.csv", rows)
    atomic_write_text(out / "results.md", _markdown(report))
    if sheet:
        write_image(out / "sheet.png", np.concatenate([np.concatenate(r, axis=1) for r in sheet], axis=0))
    return report


def _cached_row(path: Path) -> dict:
    """The scores an earlier run cached for a pair, or {} when there are none: a damaged row is scored again."""
    if not path.is_file():
        return {}
    try:
        return read_json(path, "scoring the pair again")
    except UserError as err:
        log.warning("%s", err)
        return {}


def _cached_features(path: Path, compute, refresh: bool = False) -> np.ndarray:
    """Inception features kept on disk (written atomically) so a resumed evaluation does not recompute them."""
    if path.is_file() and not refresh:
        return np.load(path)
    features = compute()
    atomic_write(path, lambda temp: np.save(temp, features))
    return features


class _FaceCache:
    """Each photo read, its largest face found and described once; each target video decoded once, in one pass
    that keeps the frames the pairs name."""

    def __init__(self, detector, recognizer, predictor, pairs: Sequence[EvalPair]):
        self.detector, self.recognizer, self.predictor = detector, recognizer, predictor
        self._faces: dict[tuple, tuple | str] = {}
        self._wanted: dict[Path, set[int]] = {}
        for pair in pairs:
            if pair.frame is not None:
                self._wanted.setdefault(pair.target, set()).add(pair.frame)
        self._frames: dict[tuple[Path, int], np.ndarray] = {}

    def _image(self, path: Path, frame: int | None) -> np.ndarray:
        from facekit.faces.imageio import read_image
        from facekit.faces.video import iter_frames

        if frame is None:
            return read_image(path)
        if (path, frame) not in self._frames:
            wanted = self._wanted.get(path, {frame})
            for index, image in enumerate(iter_frames(path)):
                if index in wanted:
                    self._frames[(path, index)] = image
                if index >= max(wanted):
                    break
        if (path, frame) not in self._frames:
            raise UserError(f"{path}: has no frame {frame}")
        return self._frames.pop((path, frame))  # each frame is described once, then only its record is kept

    def _load(self, path: Path, frame: int | None) -> tuple | str:
        key = (path, frame)
        if key not in self._faces:
            try:
                image = self._image(path, frame)
            except UserError as err:
                self._faces[key] = str(err)
                return self._faces[key]
            found = self.detector.detect(image)
            if not found:
                self._faces[key] = f"{path.name}{'' if frame is None else f' frame {frame}'}: no face found"
            else:
                face = found[0]
                if face.landmarks68 is None:  # detectors with 5 points only (SCRFD): the judges need all 68
                    face = replace(face, landmarks68=self.predictor(image, face.bbox))
                self._faces[key] = (image, face, self.recognizer.descriptor(image, face.bbox, face.landmarks68))
        return self._faces[key]

    def problem(self, pair: EvalPair) -> str | None:
        for loaded in (self._load(pair.source, None), self._load(pair.target, pair.frame)):
            if isinstance(loaded, str):
                return loaded
        return None

    def source(self, path: Path) -> tuple:
        return self._load(path, None)

    def target(self, pair: EvalPair) -> tuple:
        return self._load(pair.target, pair.frame)


def _score(result: np.ndarray, pair: EvalPair, target: np.ndarray, target_face: Face, target_descriptor: np.ndarray,
           gallery: dict[Path, np.ndarray], recognizer, predictor) -> dict:
    from app.judges import angle_error, expression, face_region, head_pose
    from facekit.faces.detect import landmarks68_to_5

    landmarks = predictor(result, target_face.bbox)  # the face where the target's was, as the swap left it
    descriptor = recognizer.descriptor(result, target_face.bbox, landmarks)
    names = list(gallery)
    similarities = np.array([float(descriptor @ gallery[name]) for name in names])
    h, w = target.shape[:2]
    outside = ~face_region((h, w), target_face.landmarks68)
    diff = np.abs(result.astype(np.float64) - target.astype(np.float64))[outside] / 255.0
    mse = float((diff**2).mean()) if diff.size else 0.0
    return {
        "_landmarks5": landmarks68_to_5(landmarks).tolist(),
        "id_cos_source": float(descriptor @ gallery[pair.source]),
        "id_cos_target": float(descriptor @ target_descriptor),
        "retrieval_top1": float(names[int(similarities.argmax())] == pair.source),
        "pose_error_deg": angle_error(head_pose(landmarks, w, h), head_pose(target_face.landmarks68, w, h)),
        "expression_error": float(np.abs(expression(landmarks) - expression(target_face.landmarks68)).mean()),
        "background_l1": float(diff.mean()) if diff.size else 0.0,
        "background_psnr": float(10 * np.log10(1.0 / mse)) if mse > 0 else 100.0,
    }


class _Judge:
    """Another recognizer: cosine and retrieval on aligned 112² ArcFace crops (sources embedded once)."""

    def __init__(self, embedder, sources: dict[Path, tuple[np.ndarray, Face]]):
        self.embedder = embedder.eval()
        self.gallery = {path: self._embed(image, face.landmarks5) for path, (image, face) in sources.items()}

    def _embed(self, image: np.ndarray, landmarks5) -> np.ndarray:
        import torch

        from facekit.faces.align import estimate_transform, warp_face

        crop = warp_face(image, estimate_transform(np.asarray(landmarks5), 112, mode="similarity"), 112)
        with torch.no_grad():
            vector = self.embedder(torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255)[0][0].numpy()
        return vector / max(float(np.linalg.norm(vector)), 1e-8)

    def score(self, result: np.ndarray, landmarks5, source: Path, name: str) -> dict[str, float]:
        vector = self._embed(result, landmarks5)
        names = list(self.gallery)
        best = names[int(np.argmax([vector @ self.gallery[n] for n in names]))]
        return {f"{name}_cos_source": float(vector @ self.gallery[source]), f"{name}_retrieval_top1": float(best == source)}


def temporal_stability(swap: Swap, source: tuple[np.ndarray, Face], video: Path, detector, predictor,
                       frames: int) -> dict[str, float] | None:
    """On the first `frames` consecutive frames with a face of a target video (None when it has fewer than
    2), tracked as `distilswap swap` tracks them:
    landmark jitter (how much more the result's 68 landmarks move from frame to frame than the input's, in
    face widths) and warp error (the result warped by the input's own optical flow against its next frame,
    in the face, beyond the input's own warp error)."""
    import cv2

    from app.judges import face_region
    from app.tracking import FaceTracker
    from facekit.faces.video import iter_frames

    tracker = FaceTracker(detector, predictor)
    inputs, outputs, widths = [], [], []
    for image in iter_frames(video):
        faces = tracker(image)
        if not faces and not inputs:  # the face has not come into view yet
            continue
        if not faces:
            break
        result = np.ascontiguousarray(swap(source[0], source[1], image, faces[0]), dtype=np.uint8)
        inputs.append((image, predictor(image, faces[0].bbox)))  # both measured the same way
        outputs.append((result, predictor(result, faces[0].bbox)))
        widths.append(float(np.ptp(faces[0].landmarks68[:, 0])))
        if len(inputs) == frames:
            break
    if len(inputs) < 2:
        return None
    jitter, warp = [], []
    for t in range(len(inputs) - 1):
        moves_in = inputs[t + 1][1] - inputs[t][1]
        moves_out = outputs[t + 1][1] - outputs[t][1]
        jitter.append(float(np.linalg.norm(moves_out - moves_in, axis=1).mean()) / widths[t])
        grey = [cv2.cvtColor(inputs[k][0], cv2.COLOR_RGB2GRAY) for k in (t, t + 1)]
        flow = cv2.calcOpticalFlowFarneback(grey[1], grey[0], None, 0.5, 3, 15, 3, 5, 1.2, 0)  # t+1 -> t
        h, w = grey[0].shape
        grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), axis=-1).astype(np.float32) + flow
        face = face_region((h, w), inputs[t + 1][1], grow=0.0)
        excess = []
        for sequence in (inputs, outputs):
            warped = cv2.remap(sequence[t][0], grid[..., 0], grid[..., 1], cv2.INTER_LINEAR)
            excess.append(np.abs(warped.astype(np.float64) - sequence[t + 1][0])[face].mean() / 255)
        warp.append(max(0.0, excess[1] - excess[0]))
    return {"landmark_jitter": float(np.mean(jitter)), "warp_error": float(np.mean(warp))}


def _summary(rows: list[dict], models: list[str], sources: int, extra: list[str]) -> dict[str, dict]:
    summary = {}
    for name in models:
        mine = [r for r in rows if r["model"] == name]
        summary[name] = {m: float(np.mean([r[m] for r in mine])) for m in (*METRICS, *extra) if all(m in r for r in mine)}
        summary[name]["pairs"] = len(mine)
        summary[name]["retrieval_chance"] = 1.0 / sources
    return summary


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = ["model", "source", "target", "frame", *METRICS,
               *sorted({k for r in rows for k in r if k.endswith(("_cos_source", "_retrieval_top1")) and k not in METRICS})]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _markdown(report: dict) -> str:
    head = ["model", "id cos to source ↑", "id cos to target", "top-1 retrieval ↑", "pose error (°) ↓",
            "expression error ↓", "background L1 ↓", "background PSNR ↑"]
    lines = [f"# Swaps of {report['pairs']} real (source, target) pairs", "",
             f"Identity by {report['judges']['identity']}; retrieval among {report['sources']} sources (chance "
             f"{1 / report['sources']:.2f}); pose by {report['judges']['pose']}; FID {report['fid']}; .onnx models "
             f"on {report['engine']}.", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    extra = [k for k in next(iter(report["models"].values())) if k not in (*METRICS, "pairs", "retrieval_chance")]
    if any(k in extra for k in ("landmark_jitter", "warp_error")):
        lines[2] += " Temporal: over the first frames of each target video, tracked; landmark jitter in face widths, warp error beyond the input's own."
    lines[-2] = lines[-2][:-2] + "".join(f" | {k.replace('_', ' ')}" for k in extra) + " |"
    lines[-1] = lines[-1] + "---:|" * len(extra)
    for name, m in report["models"].items():
        lines.append(f"| {name} | {m['id_cos_source']:.3f} | {m['id_cos_target']:.3f} | {m['retrieval_top1']:.2f} | "
                     f"{m['pose_error_deg']:.1f} | {m['expression_error']:.3f} | {m['background_l1']:.4f} | "
                     f"{m['background_psnr']:.1f} |" + "".join(f" {m[k]:.3f} |" for k in extra))
    if report["skipped"]:
        lines += ["", f"Skipped {len(report['skipped'])} pair(s):"]
        lines += [f"- {s['source']} → {s['target']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


FID_CROP = 299  # the face box tile Inception sees, at its own input size


def _face_tile(image: np.ndarray, face: Face, size: int = 128) -> np.ndarray:
    """The face's box, enlarged, as a square tile for the contact sheet."""
    import cv2

    x0, y0, x1, y1 = face.bbox
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * 0.9
    matrix = np.array([[size / (2 * half), 0, size / 2 - cx * size / (2 * half)],
                       [0, size / (2 * half), size / 2 - cy * size / (2 * half)]])
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_AREA)


def _slug(name: str) -> str:
    """The cache folder of a model: its name, and the size and time of its files when it is a path, so a model
    retrained in place is scored again rather than read from the last run's cache."""
    path = Path(name)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    stamp = name + "".join(f"|{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-60:] + "-" + hashlib.sha256(stamp.encode()).hexdigest()[:6]
