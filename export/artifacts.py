"""`distilswap export`: one checkpoint + one identity -> a verified directory of phone-ready files.

Everything is written into a temporary directory next to the destination and moved into place only
after `verify_export` passes, so a failed export never looks like a good one and never replaces one.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from facekit.identity import resolve_identity
from export import layout
from export.metadata import artifact_metadata, set_onnx_metadata
from export.verify import MANIFEST, REFERENCE, WEIGHT_PREFIX, Verification, verify_export, write_report
from facekit.errors import UserError
from facekit.shipped import file_sha256
from student.checkpoint import load_student
from student.model import MobileFaceSwap, check_identity_values

FORMATS = ("onnx", "ort", "int8", "coreml")
DEFAULT_FORMATS = ("onnx", "ort", "coreml")
INT8_TARGET = 2 / 255  # the target for a trained student (mean abs error on real crops)
# What verification enforces: the target itself. With the mask head in fp32 (export/quantize.py) the demo's
# distilled student reads 0.0012 on held-out crops, a random-init 224² one 1e-5.
INT8_BOUND = INT8_TARGET
INT8_EVAL_CROPS = 8
REFERENCE_SEED = 1234
MAC_CHECK = Path(__file__).with_name("mac_check.py")


def parse_formats(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        raise UserError(f"unknown export format(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    return names


def safe_name(name: str) -> str:
    """Identity names become file names: keep them portable."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    if not cleaned:
        raise UserError(f"identity name {name!r} has no usable characters; pass --name")
    return cleaned


def check_destination(out: Path, force: bool, inputs: Sequence[str | Path | None] = ()) -> None:
    """--force replaces an earlier export only: never a folder that is not one, nor one holding the inputs."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; --out must be a directory to create")
    if out.exists() and not force:
        raise UserError(f"{out} already exists; pass --force to replace it (only after the new export verifies)")
    if out.exists():
        if not (out / MANIFEST).is_file():
            raise UserError(f"{out} is not an earlier export (no {MANIFEST}); --force only replaces exports, "
                            "choose a new --out")
        resolved = out.resolve()
        inside = [str(p) for p in inputs if p is not None and resolved in Path(p).resolve().parents]
        if inside:
            raise UserError(f"{out} holds this export's input {inside[0]}; choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {out.parent} ({err.strerror}); choose another --out") from None
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"{out.parent} is not writable; choose another --out")


def export_artifacts(
    checkpoint: str | Path,
    source: str | Path,
    out: str | Path,
    formats: Sequence[str] = DEFAULT_FORMATS,
    name: str | None = None,
    force: bool = False,
    calibration: str | Path | None = None,
    resolution: int | None = None,
    embedder: str | Path | None = None,
    detector_models: str | Path | None = None,
    require: Sequence[str] = (),
) -> Verification:
    """`require` names formats whose failed accuracy bound is fatal; without it a missed int8 bound drops the
    int8 file (recorded with its value and bound) and the rest of the export still lands."""
    out = Path(out)
    check_destination(out, force, (checkpoint, source, calibration, embedder))
    if "int8" in formats:
        from export.quantize import require_calibration_folder

        require_calibration_folder(calibration)
    model = load_student(checkpoint)
    resolution = resolution or model.config.resolution
    if resolution % 32:
        raise UserError(f"--resolution must be a multiple of 32, got {resolution}")
    source_name, embedding, feature_map = resolve_identity(source, embedder, detector_models, dim=model.config.identity_dim)
    identity = safe_name(name or source_name)
    check_identity_values(embedding, feature_map)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the export's permissions
    try:
        write_artifacts(staging, model, embedding, feature_map, identity, file_sha256(checkpoint), resolution, formats, calibration)
        result = verify_export(staging)
        if "int8" not in require:
            result = _drop_failed_int8(staging, result)
        write_report(result, staging)
        if not result.ok:
            first = "; ".join(c.describe() for c in result.failures[:3])
            raise UserError(f"export failed verification ({first}); nothing was written to {out}")
        _move_into_place(staging, out)
        result.directory = str(out)
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_artifacts(
    directory: Path,
    model: MobileFaceSwap,
    embedding: torch.Tensor,
    feature_map: torch.Tensor,
    identity: str,
    checkpoint_sha256: str,
    resolution: int,
    formats: Sequence[str],
    calibration: str | Path | None,
) -> dict[str, dict]:
    from export import onnx_export

    model.eval()
    net = model.bake(embedding, feature_map)
    meta = lambda kind, who=identity, **extra: artifact_metadata(checkpoint_sha256, who, resolution, {"artifact": kind, **extra})  # noqa: E731
    baked = layout.baked(identity)
    steps = ["injector", "dynamic", "baked"] + [f for f in ("ort", "int8", "coreml") if f in formats]
    artifacts: dict[str, dict] = {}
    reference = _reference(model, net, embedding, feature_map, resolution)
    for step in tqdm(steps, desc="export", unit="artifact"):
        if step == "injector":
            onnx_export.export_injector(model, directory / layout.INJECTOR, meta("injector", "(input)"))
            artifacts[layout.INJECTOR] = {"kind": "injector"}
        elif step == "dynamic":
            onnx_export.export_dynamic(model, directory / layout.DYNAMIC, meta("swapper_dynamic", "(input)"))
            artifacts[layout.DYNAMIC] = {"kind": "swapper_dynamic"}
        elif step == "baked":
            onnx_export.export_baked(net, directory / baked, meta("swapper_baked"), resolution)
            artifacts[baked] = {"kind": "swapper_baked"}
        elif step == "ort":
            from export.quantize import ORT_LEVEL, to_ort_format

            to_ort_format(directory / baked, directory / layout.ort(identity))
            artifacts[layout.ort(identity)] = {"kind": "swapper_ort", "optimization": ORT_LEVEL}
        elif step == "int8":
            artifacts.update(_int8(directory, baked, net, identity, calibration, resolution, reference, meta))
        elif step == "coreml":
            artifacts.update(_coreml(directory, net, identity, resolution, meta))
    (directory / "README.md").write_text(_readme(identity, resolution, artifacts))
    artifacts["README.md"] = {"kind": "file"}
    np.savez(directory / REFERENCE, **reference)
    manifest = {"identity": identity, "resolution": resolution, "checkpoint_sha256": checkpoint_sha256, "artifacts": artifacts}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return artifacts


def _reference(model, net, embedding, feature_map, resolution) -> dict[str, np.ndarray]:
    """Fixed inputs and PyTorch's outputs on them: what every artifact is checked against."""
    generator = torch.Generator().manual_seed(REFERENCE_SEED)
    # 8-bit pixels, so a Core ML image input on a Mac sees exactly this target
    target = torch.randint(0, 256, (1, 3, resolution, resolution), generator=generator).float() / 255.0
    with torch.no_grad():
        image, mask = net(target)
        weights = model.identity_weights(embedding, feature_map)
    reference = {"target": target, "embedding": embedding, "feature_map": feature_map, "image": image, "mask": mask}
    reference.update({WEIGHT_PREFIX + k: v[0] for k, v in weights.items()})
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in reference.items()}


def _int8(directory, baked, net, identity, calibration, resolution, reference, meta) -> dict[str, dict]:
    from export.quantize import calibration_crops, quantize_int8

    crops, source = calibration_crops(calibration, resolution)
    held_out = min(INT8_EVAL_CROPS, len(crops) // 4)  # measure on crops the calibration did not see, when there are enough
    calibrate, evaluate = (crops[:-held_out], crops[-held_out:]) if held_out else (crops, crops[:INT8_EVAL_CROPS])
    name = layout.int8(identity)
    quantize_int8(directory / baked, directory / name, calibrate)
    where = "held-out crops" if held_out else "calibration crops (too few to hold some out)"
    note = f"calibrated on {len(calibrate)} of {source}; error on {len(evaluate)} {where}"
    set_onnx_metadata(directory / name, meta("swapper_int8", calibration=note, int8_target=f"{INT8_TARGET:.5f}"))
    evaluation = torch.from_numpy(evaluate)
    with torch.no_grad():
        expected = torch.cat([net(crop[None])[0] for crop in evaluation])
    reference["int8_crops"] = evaluation.numpy()
    reference["int8_expected"] = expected.numpy()
    return {name: {"kind": "swapper_int8", "bound": INT8_BOUND, "target": INT8_TARGET, "note": note}}


def _drop_failed_int8(directory: Path, result: Verification) -> Verification:
    """An int8 file that misses its error bound is removed and listed under `skipped` in the manifest (with
    the value and the bound); everything else is verified again without it."""
    failed = [c for c in result.failures if c.check.startswith("int8 mean abs")]
    if not failed or len(failed) != len(result.failures):
        return result
    manifest = json.loads((directory / MANIFEST).read_text())
    skipped = manifest.setdefault("skipped", {})
    for artifact in dict.fromkeys(c.artifact for c in failed):  # one file may miss on both engines
        checks = [c for c in failed if c.artifact == artifact]
        reason = "; ".join(c.describe() for c in checks)
        entry = manifest["artifacts"].pop(artifact)
        skipped[artifact] = {**entry, "value": max(c.value for c in checks), "reason": reason}
        (directory / artifact).unlink()
        print(f"distilswap: warning: int8 skipped: {reason}; the other files are verified and written "
              "(pass --require int8 to make this fatal)", file=sys.stderr)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
    (directory / "README.md").write_text(_readme(manifest["identity"], manifest["resolution"], manifest["artifacts"]))
    again = verify_export(directory)
    again.skipped = skipped
    return again


def _coreml(directory, net, identity, resolution, meta) -> dict[str, dict]:
    from export.coreml_export import export_coreml, palettize

    full, small = layout.coreml(identity), layout.coreml(identity, palettized=True)
    model = export_coreml(net, directory / full, meta("coreml"), resolution)
    palettize(model, directory / small, meta("coreml_palettized"))
    shutil.copyfile(MAC_CHECK, directory / MAC_CHECK.name)
    return {full: {"kind": "coreml"}, small: {"kind": "coreml"}, MAC_CHECK.name: {"kind": "file"}}


def _readme(identity: str, resolution: int, artifacts: dict[str, dict]) -> str:
    """What an app developer needs to know to use the files, next to the files."""
    lines = [
        f"# DistilSwap export: identity `{identity}`, {resolution}² input, batch 1", "",
        "Inputs: `target`, an aligned RGB face crop in [0,1] (Core ML: an RGB image, 0..255).",
        "Outputs: `image` (the swapped face, already blended through the mask) and `mask` (fusion mask).", "",
        "| file | what |", "|---|---|",
    ]
    what = {
        "injector": "identity (embedding 1×512, feature map 1×512×7×7) → the 18 identity weights, by name",
        "swapper_dynamic": "target + the 18 weights as inputs → image, mask (any identity, flexible size)",
        "swapper_baked": "the identity baked in; swap another in with `SessionOptions.add_initializer(name, value)` "
        "for each injector output (same names) at baked speed",
        "swapper_ort": "the baked swapper in ONNX Runtime's mobile format (pre-optimised at ENABLE_EXTENDED)",
        "swapper_int8": "static int8 (QDQ) of the baked swapper",
        "coreml": "Core ML mlprogram, fp16 weights (`_palettized`: 4-bit weight palettes)",
    }
    lines += [f"| `{name}` | {what[entry['kind']]} |" for name, entry in artifacts.items() if entry["kind"] in what]
    lines += [
        "", "`reference.npz` holds fixed inputs and PyTorch's outputs; `distilswap export verify DIR` re-checks every "
        "file against it (`verification.json`).",
        "Core ML models only run on macOS, so on Linux they are checked structurally: on a Mac, run "
        "`python3 mac_check.py` here (needs coremltools, numpy, pillow) to compare their outputs with the reference.",
    ]
    return "\n".join(lines) + "\n"


def _move_into_place(staging: Path, out: Path) -> None:
    """The old export (with --force) is only removed once the new one is in place."""
    if not out.exists():
        os.replace(staging, out)
        return
    retired = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    os.replace(out, retired / out.name)
    os.replace(staging, out)
    shutil.rmtree(retired, ignore_errors=True)
