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
    directory = require_calibration_folder(directory)
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


def require_calibration_folder(directory: str | Path | None) -> Path:
    """The --calibration folder, checked before an export spends minutes on the other formats."""
    if directory is None:
        raise UserError("int8 needs real face crops to calibrate on: pass --calibration DIR (a folder of images)")
    if not Path(directory).is_dir():
        raise UserError(f"{directory}: calibration folder not found (pass --calibration DIR with face crops)")
    return Path(directory)


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


# The fusion mask's head stays fp32 as a whole (`mask_head_nodes`): the mask gates every output pixel between the
# swap and the target, and quantized it carried most of the error. On the demo's distilled student (held-out
# crops, mean abs vs fp32): 0.0147 with it quantized, 0.0012 without; on the 224² bench graph it is no slower
# (ONNX Runtime 13.68 vs 14.36 ms, OpenVINO 9.89 vs 10.02 ms, 1 thread, 80 interleaved rounds).
# Convs with fewer channels than this stay fp32 too: the full-resolution heads (RGB, mask, their 8-channel inputs)
# and the first depthwise layer. In int8 they ran 2-3x slower than in fp32 (ORT's NHWC u8 kernels gain nothing
# at 1-8 channels) and took 45 % of the int8 graph's time; their outputs are also the most error-sensitive.
# Measured on the 224² bench student, 1 thread, interleaved: every op quantized 1.09x *slower* than fp32,
# Conv only 1.07x slower, Conv with these kept fp32 1.16x faster, and Resize + Concat quantized too 1.18x.
INT8_MIN_CHANNELS = 32
INT8_OPS = ("Conv", "Resize", "Concat")


def quantize_int8(onnx_path: str | Path, out_path: str | Path, crops: np.ndarray) -> Path:
    """Static QDQ int8: per-channel weights (depthwise kernels differ per channel), uint8 activations; the mask
    head and convs narrower than INT8_MIN_CHANNELS kept fp32."""
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
            op_types_to_quantize=list(INT8_OPS),
            nodes_to_exclude=sorted(set(narrow_convs(prepared, INT8_MIN_CHANNELS)) | mask_head_nodes(prepared)),
        )
    return out_path


def narrow_convs(onnx_path: str | Path, min_channels: int) -> list[str]:
    """Names of the Conv nodes with fewer than `min_channels` input or output channels (constant weights)."""
    import onnx

    model = onnx.load(str(onnx_path))
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    narrow = []
    for node in model.graph.node:
        shape = weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if shape is None:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if min(shape[0], shape[1] * group) < min_channels:
            narrow.append(node.name)
    return narrow


def mask_head_nodes(onnx_path: str | Path) -> set[str]:
    """Names of the nodes that compute only the `mask` output: its ancestors that the decoder does not also use
    (the encoder is an ancestor of the decoder's first Concat, where the first skip joins). Empty for a graph
    without a mask output or a Concat."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    concat = next((n for n in graph.node if n.op_type == "Concat"), None)
    if concat is None or "mask" not in {o.name for o in graph.output}:
        return set()
    producers = {output: node for node in graph.node for output in node.output}

    def ancestors(tensors: list[str]) -> set[str]:
        seen, stack = set(), list(tensors)
        while stack:
            node = producers.get(stack.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                stack.extend(node.input)
        return seen

    return ancestors(["mask"]) - ancestors(list(concat.output))
