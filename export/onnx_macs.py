"""Parameters and multiply-accumulates of any ONNX graph, in the unit student/complexity.py counts the student
in (MACs: convolutions, matrix products, bilinear resizes at 4 per output element, BatchNorm at 2 per element),
so a peer someone else exported (inswapper_128, SimSwap, HyperSwap) sits in the same table as our student.
Shapes come from ONNX shape inference, with every free dimension (the batch) set to 1."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from facekit.errors import UserError


def onnx_counts(path: str | Path) -> dict[str, int]:
    """{"params": weights in float initializers, "macs": per forward at batch 1}."""
    import onnx
    from onnx import TensorProto, shape_inference

    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as err:
        raise UserError(f"{path}: not a loadable ONNX model ({str(err).splitlines()[0][:200]})") from None
    initializers = {init.name: tuple(init.dims) for init in model.graph.initializer}
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1  # a free (batch) dimension: count one frame
    model = shape_inference.infer_shapes(model)
    shapes = dict(initializers)
    for value in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)
    params = sum(int(np.prod(init.dims)) for init in model.graph.initializer if init.data_type in floats)
    macs = sum(_node_macs(node, shapes) for node in model.graph.node)
    return {"params": params, "macs": int(macs)}


def _node_macs(node, shapes: dict[str, tuple[int, ...]]) -> int:
    def shape(name: str) -> tuple[int, ...] | None:
        return shapes.get(name)

    out = shape(node.output[0]) if node.output else None
    if node.op_type == "Conv" and out and shape(node.input[1]):
        weight = shape(node.input[1])  # [C_out, C_in / groups, kh, kw]
        return int(np.prod(out)) * int(np.prod(weight[1:]))
    if node.op_type == "ConvTranspose" and shape(node.input[0]) and shape(node.input[1]):
        weight = shape(node.input[1])  # [C_in, C_out / groups, kh, kw]
        return int(np.prod(shape(node.input[0]))) * int(np.prod(weight[1:]))
    if node.op_type in ("MatMul", "Gemm") and out and shape(node.input[0]):
        a = shape(node.input[0])
        transposed = node.op_type == "Gemm" and any(att.name == "transA" and att.i for att in node.attribute)
        inner = a[-2] if transposed else a[-1]
        return int(np.prod(out)) * int(inner)
    if node.op_type == "Resize" and out and any(att.name == "mode" and att.s == b"linear" for att in node.attribute):
        return 4 * int(np.prod(out))
    if node.op_type == "BatchNormalization" and out:
        return 2 * int(np.prod(out))
    return 0
