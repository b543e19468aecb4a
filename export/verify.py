"""Re-open every artifact of an export directory and check it against PyTorch's outputs.

The export writes `reference.npz` (fixed inputs and PyTorch's outputs on them) and `manifest.json`
(what each file is), so verification needs neither the checkpoint nor the code that made it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from export.metadata import missing_keys, onnx_metadata
from facekit.errors import UserError
from facekit.files import read_json

MANIFEST = "manifest.json"
REFERENCE = "reference.npz"
REPORT = "verification.json"
FP32_TOLERANCE = 1e-4  # max abs at ORT_ENABLE_BASIC (measured ≈1e-7; ENABLE_ALL fuses and drifts)
OPENVINO_CHECK = "max abs vs PyTorch (OpenVINO)"  # the baked file on the app's other engine (bench reads it)
ORT_FORMAT_TOLERANCE = 1e-3  # the .ort file is pre-optimised at ENABLE_EXTENDED
WEIGHT_PREFIX = "weight/"


@dataclass
class Check:
    artifact: str
    check: str
    ok: bool
    value: float | None = None
    bound: float | None = None
    note: str = ""

    def describe(self) -> str:
        """One line: what was checked, the measured value and its bound."""
        text = f"{self.artifact}: {self.check}"
        if self.value is not None:
            text += f" {self.value:.4g}" + (f" > bound {self.bound:.4g}" if self.bound is not None and not self.ok else "")
        return text + (f" ({self.note})" if self.note else "")


@dataclass
class Verification:
    directory: str
    checks: list[Check] = field(default_factory=list)
    skipped: dict[str, dict] = field(default_factory=dict)  # artifacts dropped for a missed bound, with the reason

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def add(self, artifact: str, check: str, ok: bool, value: float | None = None, bound: float | None = None, note: str = "") -> None:
        self.checks.append(Check(artifact, check, bool(ok), None if value is None else float(value), bound, note))

    def measure(self, artifact: str, check: str, value: float, bound: float | None, note: str = "") -> None:
        """A number within `bound` (None: reported only, never fails)."""
        self.add(artifact, check, bound is None or value <= bound, value, bound, note)

    def to_json(self) -> dict:
        return {"directory": self.directory, "ok": self.ok, "checks": [asdict(c) for c in self.checks],
                "skipped": self.skipped}

    def table(self) -> str:
        rows = []
        for c in self.checks:
            value = "" if c.value is None else f"{c.value:.3g}"
            bound = "" if c.bound is None else f"≤ {c.bound:.3g}"
            rows.append(f"{'ok  ' if c.ok else 'FAIL'} {c.artifact:<34} {c.check:<34} {value:>10} {bound:>10} {c.note}")
        rows += [f"SKIP {name:<34} {entry['reason']}" for name, entry in self.skipped.items()]
        return "\n".join(rows)


def verify_export(directory: str | Path) -> Verification:
    """Every check is recorded, failing or not, so one run shows everything wrong."""
    directory = Path(directory)
    result = Verification(str(directory))
    try:
        manifest = read_json(directory / MANIFEST, "re-run `distilswap export`")
        artifacts = manifest.get("artifacts")
        if "resolution" not in manifest or not isinstance(artifacts, dict) or not all(
                isinstance(entry, dict) and entry.get("kind") in CHECKERS for entry in artifacts.values()):
            raise UserError(f"{directory / MANIFEST}: damaged, no resolution or artifacts of known kinds; "
                            "re-run `distilswap export`")
        with np.load(directory / REFERENCE, allow_pickle=False) as data:
            reference = {key: data[key] for key in data.files}
    except (OSError, ValueError) as err:  # missing, truncated or hand-edited bookkeeping files
        raise UserError(f"{directory}: not a readable export ({type(err).__name__}: {err}); re-run `distilswap export`") from None
    resolution = int(manifest["resolution"])
    result.skipped = manifest.get("skipped", {})
    for name, entry in manifest["artifacts"].items():
        path = directory / name
        if not path.exists():
            result.add(name, "file exists", False)
            continue
        checker = CHECKERS[entry["kind"]]
        try:
            checker(result, path, reference, entry, resolution)
        except Exception as err:  # a file that cannot even be opened is a failed check, not a crash
            result.add(name, "opens and runs", False, note=f"{type(err).__name__}: {err}"[:300])
    return result


def write_report(result: Verification, directory: str | Path) -> Path:
    path = Path(directory) / REPORT
    path.write_text(json.dumps(result.to_json(), indent=2))
    return path


# -- per-kind checks ------------------------------------------------------------------------------

def _onnx_common(result: Verification, path: Path) -> None:
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    result.add(path.name, "onnx checker", True)
    _metadata(result, path.name, onnx_metadata(path))


def _metadata(result: Verification, name: str, metadata: dict[str, str]) -> None:
    missing = missing_keys(metadata)
    result.add(name, "metadata", not missing, note=f"missing {', '.join(missing)}" if missing else "")


def _weights(reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k[len(WEIGHT_PREFIX):]: v for k, v in reference.items() if k.startswith(WEIGHT_PREFIX)}


def _compare_levels(result: Verification, path: Path, run, expected: list[np.ndarray], bound: float) -> None:
    """Bound at ENABLE_BASIC; ENABLE_ALL reported (its fusions change rounding)."""
    from facekit.onnx_runtime import ort_session

    for level, level_bound in (("basic", bound), ("all", None)):
        outputs = run(ort_session(path, level))
        error = max(float(np.abs(o - e).max()) for o, e in zip(outputs, expected))
        result.measure(path.name, f"max abs vs PyTorch ({level})", error, level_bound)


def _check_injector(result, path, reference, entry, resolution) -> None:
    _onnx_common(result, path)
    weights = _weights(reference)
    names = list(weights)

    def run(session):
        return session.run(names, {"embedding": reference["embedding"], "feature_map": reference["feature_map"]})

    _compare_levels(result, path, run, [weights[n] for n in names], FP32_TOLERANCE)


def _check_dynamic(result, path, reference, entry, resolution) -> None:
    from export.onnx_export import run_swapper

    _onnx_common(result, path)
    weights = _weights(reference)
    run = lambda session: run_swapper(session, reference["target"], weights)  # noqa: E731
    _compare_levels(result, path, run, [reference["image"], reference["mask"]], FP32_TOLERANCE)


def _check_baked(result, path, reference, entry, resolution) -> None:
    from export.onnx_export import check_identity_initializers, identity_session, run_swapper
    from facekit.openvino_session import OpenVinoSession

    _onnx_common(result, path)
    run = lambda session: run_swapper(session, reference["target"])  # noqa: E731
    _compare_levels(result, path, run, [reference["image"], reference["mask"]], FP32_TOLERANCE)
    error = max(float(np.abs(o - e).max()) for o, e in zip(run(OpenVinoSession(path, 1)), (reference["image"], reference["mask"])))
    result.measure(path.name, OPENVINO_CHECK, error, FP32_TOLERANCE)
    weights = _weights(reference)
    problems = check_identity_initializers(path, {k: v.shape for k, v in weights.items()})
    result.add(path.name, "identity initializers by name", not problems, note="; ".join(problems))
    if not problems:
        image, mask = run_swapper(identity_session(path, weights, "basic"), reference["target"])
        error = max(float(np.abs(image - reference["image"]).max()), float(np.abs(mask - reference["mask"]).max()))
        result.measure(path.name, "add_initializer swap vs PyTorch", error, FP32_TOLERANCE)


def _check_ort(result, path, reference, entry, resolution) -> None:
    from export.onnx_export import run_swapper
    from facekit.onnx_runtime import ort_session

    session = ort_session(path, "disable")
    _metadata(result, path.name, session.get_modelmeta().custom_metadata_map)
    image, mask = run_swapper(session, reference["target"])
    error = max(float(np.abs(image - reference["image"]).max()), float(np.abs(mask - reference["mask"]).max()))
    result.measure(path.name, "max abs vs PyTorch", error, ORT_FORMAT_TOLERANCE)


def _check_int8(result, path, reference, entry, resolution) -> None:
    """The int8 file on both engines the app runs it on: they quantize the same QDQ graph each its own way."""
    from export.onnx_export import run_swapper
    from facekit.onnx_runtime import ort_session
    from facekit.openvino_session import OpenVinoSession

    _onnx_common(result, path)
    crops, expected = reference["int8_crops"], reference["int8_expected"]
    for engine, session in (("", ort_session(path, "all")), (" (OpenVINO)", OpenVinoSession(path, 1))):
        errors = [np.abs(run_swapper(session, crop[None])[0] - want[None]).mean() for crop, want in zip(crops, expected)]
        result.measure(path.name, f"int8 mean abs error (crops){engine}", float(np.mean(errors)), entry.get("bound"),
                       note=entry.get("note", ""))


def _check_coreml(result, path, reference, entry, resolution) -> None:
    from export.coreml_export import check_coreml, coreml_metadata

    problems = check_coreml(path, resolution)
    result.add(path.name, "Core ML structure", not problems, note="; ".join(problems)[:300])
    _metadata(result, path.name, coreml_metadata(path))


def _check_file(result, path, reference, entry, resolution) -> None:
    result.add(path.name, "file exists", path.stat().st_size > 0)


CHECKERS = {
    "injector": _check_injector,
    "swapper_dynamic": _check_dynamic,
    "swapper_baked": _check_baked,
    "swapper_ort": _check_ort,
    "swapper_int8": _check_int8,
    "coreml": _check_coreml,
    "file": _check_file,
}
