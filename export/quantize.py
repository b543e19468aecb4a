"""Mobile variants of the baked ONNX swapper: ONNX Runtime's `.ort` format and static int8 (QDQ).

int8 is calibrated on real face crops: activation ranges measured on random noise would not match
what the phone sees. The calibration set is recorded in the artifact's metadata.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from facekit.errors import UserError
from facekit.onnx_runtime import ort_session, session_options

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# What onnxruntime.tools.convert_onnx_models_to_ort does for phones ("Fixed" style): every optimisation level,
# except the NCHWc layout transformer, whose blocked layout is specific to x86 vector widths.
ORT_LEVEL = "all, without NchwcTransformer"


def calibration_crops(directory: str | Path, resolution: int, limit: int = 64) -> tuple[np.ndarray, str]:
    """-> ([N,3,R,R] crops in [0,1], a description of where they came from, for the metadata).

    A `distilswap-faces/1` data set (real photos or the synthetic world) gives its aligned crops;
    any other folder gives its images (recursive, sorted), centre-cropped and resized.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: calibration folder not found (pass --calibration DIR with face crops)")
    if (directory / "dataset.json").is_file():
        from facekit.world.folder_dataset import FolderDataset

        dataset = FolderDataset(directory, resolution=resolution)
        count = min(limit, len(dataset))
        step = max(1, len(dataset) // max(count, 1))  # spread over identities rather than the first few
        crops = np.stack([dataset[i * step]["image"].numpy() for i in range(count)]) if count else np.zeros((0,))
        source = f"{count} aligned crops of the face data set {directory.resolve()}"
    else:
        crops, source = _folder_crops(directory, resolution, limit)
    if len(crops) == 0:
        raise UserError(f"{directory}: no images ({', '.join(IMAGE_SUFFIXES)}) to calibrate int8 on")
    return crops.astype(np.float32), source


def _folder_crops(directory: Path, resolution: int, limit: int) -> tuple[np.ndarray, str]:
    from PIL import Image

    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    crops = []
    for path in files:
        with Image.open(path) as image:
            image = image.convert("RGB")
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BILINEAR)
            crops.append(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(crops) if crops else np.zeros((0,)), f"{len(crops)} centre-cropped images of {directory.resolve()}"


def to_ort_format(onnx_path: str | Path, ort_path: str | Path) -> Path:
    """Optimise once and save in ORT's flatbuffer format, the way ONNX Runtime's own converter prepares a
    model for the mobile runtime. On this desktop it runs slower than the `.onnx` (which ORT lays out in
    NCHWc blocks for this CPU when it loads it); on a phone the ARM kernels or the NNAPI / Core ML / XNNPACK
    execution providers run it."""
    options = session_options("all")
    options.optimized_model_filepath = str(ort_path)
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort_session(onnx_path, options=options, disabled_optimizers=["NchwcTransformer"])
    return Path(ort_path)


class _Crops:
    """onnxruntime.quantization's CalibrationDataReader protocol over an array of crops."""

    def __init__(self, crops: np.ndarray):
        self._items: Iterator[np.ndarray] = iter(crops)

    def get_next(self) -> dict[str, np.ndarray] | None:
        crop = next(self._items, None)
        return None if crop is None else {"target": crop[None].astype(np.float32)}


def quantize_int8(onnx_path: str | Path, out_path: str | Path, crops: np.ndarray) -> Path:
    """Static QDQ int8: per-channel weights (depthwise kernels differ per channel), uint8 activations."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            _Crops(crops),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return out_path
