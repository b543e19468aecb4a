"""The baked swapper as a Core ML mlprogram (fp16 weights) and its 4-bit palettized variant.

Core ML cannot run on Linux, so `check_coreml` checks structure only (spec inputs/outputs/dtypes,
MIL ops: every conv's weight a constant); numerics are checked through ONNX Runtime on the same
network, and `mac_check.py` (copied next to the artifacts) runs the model on a Mac.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from facekit.quiet import quiet_third_party
from student.idn import SwapNet

AUTHOR = "DistilSwap"
LICENSE = "See the student checkpoint's license (MobileFaceSwap official weights: non-commercial)"
DESCRIPTION = "MobileFaceSwap face swap with one identity baked in: aligned RGB face crop -> swapped face + fusion mask"
INPUT_DESCRIPTIONS = {"target": "aligned RGB face crop (the person whose face is replaced), 0..255 pixels"}
OUTPUT_DESCRIPTIONS = {
    "image": "swapped face, float32 [1,3,H,W] RGB in 0..1, already blended with the target through the mask",
    "mask": "fusion mask, float32 [1,1,H,W] in 0..1 (1 = generated face)",
}
PALETTE_BITS = 4
WEIGHT_OPS = ("conv", "linear", "matmul", "conv_transpose")


def export_coreml(net: SwapNet, path: str | Path, metadata: Mapping[str, str], resolution: int | None = None):
    """Converted through torch.export (coremltools' trace path breaks on recent numpy)."""
    import coremltools as ct

    r = resolution or net.config.resolution
    with torch.no_grad(), warnings.catch_warnings(), quiet_third_party("coremltools"):
        warnings.simplefilter("ignore")
        program = torch.export.export(net.eval(), (torch.rand(1, 3, r, r),)).run_decompositions({})
        model = ct.convert(
            program,
            inputs=[ct.ImageType(name="target", shape=(1, 3, r, r), scale=1 / 255.0, color_layout=ct.colorlayout.RGB)],
            outputs=[ct.TensorType(name="image", dtype=np.float32), ct.TensorType(name="mask", dtype=np.float32)],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16,
            minimum_deployment_target=ct.target.iOS16,
        )
    _describe(model, metadata)
    model.save(str(path))
    return model


def palettize(model, path: str | Path, metadata: Mapping[str, str], nbits: int = PALETTE_BITS):
    """k-means weight palettes: each large weight becomes 2^nbits fp16 values plus nbits-bit indices."""
    import coremltools.optimize.coreml as cto

    config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=nbits))
    with warnings.catch_warnings(), quiet_third_party("coremltools"):
        warnings.simplefilter("ignore")
        small = cto.palettize_weights(model, config)
    _describe(small, {**metadata, "compression": f"{nbits}-bit k-means palettization"})
    small.save(str(path))
    return small


def _describe(model, metadata: Mapping[str, str]) -> None:
    model.author = AUTHOR
    model.license = LICENSE
    model.short_description = f"{DESCRIPTION} (identity: {metadata.get('identity', '?')})"
    model.version = metadata.get("distilswap_version", "unknown")
    for name, text in INPUT_DESCRIPTIONS.items():
        model.input_description[name] = text
    for name, text in OUTPUT_DESCRIPTIONS.items():
        model.output_description[name] = text
    model.user_defined_metadata.update({key: str(value) for key, value in metadata.items()})


def coreml_metadata(path: str | Path) -> dict[str, str]:
    import coremltools as ct

    return dict(ct.utils.load_spec(str(path)).description.metadata.userDefined)


def check_coreml(path: str | Path, resolution: int) -> list[str]:
    """Structural problems of a saved mlpackage (empty list = fine)."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    problems = []
    inputs = {i.name: i for i in spec.description.input}
    target = inputs.get("target")
    if target is None or target.type.WhichOneof("Type") != "imageType":
        problems.append("input `target` is not an image")
    else:
        image = target.type.imageType
        if (image.width, image.height) != (resolution, resolution):
            problems.append(f"input is {image.width}x{image.height}, expected {resolution}x{resolution}")
        if image.colorSpace != ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB:
            problems.append("input colour space is not RGB")
    expected = {"image": [1, 3, resolution, resolution], "mask": [1, 1, resolution, resolution]}
    outputs = {o.name: o for o in spec.description.output}
    for name, shape in expected.items():
        out = outputs.get(name)
        if out is None or out.type.WhichOneof("Type") != "multiArrayType":
            problems.append(f"output `{name}` missing or not a multi-array")
            continue
        array = out.type.multiArrayType
        if list(array.shape) != shape:
            problems.append(f"output `{name}` has shape {list(array.shape)}, expected {shape}")
        if array.dataType != ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32:
            problems.append(f"output `{name}` is not float32")
    if not spec.HasField("mlProgram"):
        return problems + ["not an mlprogram"]
    return problems + _check_weights(spec)


def _check_weights(spec) -> list[str]:
    """Every conv weight must come from a constant (fp16 or a palette): no identity weights as inputs."""
    from coremltools.proto import MIL_pb2

    problems = []
    for function in spec.mlProgram.functions.values():
        block = function.block_specializations[function.opset]
        constants = {}
        for op in block.operations:
            if op.type == "const" or op.type.startswith("constexpr_"):
                for out in op.outputs:
                    constants[out.name] = out.type.tensorType.dataType
        for op in block.operations:
            if op.type not in WEIGHT_OPS or "weight" not in op.inputs:
                continue
            for argument in op.inputs["weight"].arguments:
                name = argument.name if argument.WhichOneof("binding") == "name" else None
                if name is not None and name not in constants:
                    problems.append(f"{op.type} `{op.outputs[0].name}` takes a non-constant weight `{name}`")
                elif name is not None and constants[name] != MIL_pb2.DataType.FLOAT16:
                    problems.append(f"{op.type} `{op.outputs[0].name}` weight `{name}` is not fp16")
    return problems
