"""The fusion mask's last two convolutions, rewritten in a form ONNX Runtime's x86 kernels run faster.

Why: on x86 ONNX Runtime runs convolutions in its blocked-channel layout (NCHWc) and pads every output to the
block (8 channels with AVX2, 16 with AVX-512). The mask ends in a 1×1 conv to 2 channels and a 3×3 conv to 1
channel at full resolution, so both compute and write 8–16× what they need, and each leaves a layout reorder
behind (the bench's kernel profile, "Where the time goes"). Written as a MatMul and as a depthwise conv whose
channels are summed, the same arithmetic stays in plain NCHW. Same function (float rounding aside), same MAC
count; the RGB head's convs stay as they are (measured: its rewritten forms run slower).
"""
from __future__ import annotations

import numpy as np

MASK_OUTPUT = "mask"


def rewrite_mask_tail(model: "onnx.ModelProto", size: int) -> "onnx.ModelProto":  # noqa: F821
    """Baked swapper graph of `size`² -> the same graph with the mask's 1×1 conv as MatMul and its last k×k
    conv to one channel as depthwise conv + ReduceSum + bias. In place; returns the model."""
    from onnx import numpy_helper

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    weights = {init.name: init for init in graph.initializer}
    sigmoid = producer[MASK_OUTPUT]
    last = producer[sigmoid.input[0]]
    activation = producer[last.input[0]]
    pointwise = producer[activation.input[0]]
    found = [node.op_type for node in (sigmoid, last, activation, pointwise)]
    if found != ["Sigmoid", "Conv", "LeakyRelu", "Conv"]:
        raise RuntimeError(f"mask tail not found: {' <- '.join(found)}")
    _replace(graph, pointwise, _pointwise_as_matmul(pointwise, numpy_helper.to_array(weights[pointwise.input[1]]),
                                                   numpy_helper.to_array(weights[pointwise.input[2]]), size))
    _replace(graph, last, _single_output_as_depthwise(last, numpy_helper.to_array(weights[last.input[1]]),
                                                       numpy_helper.to_array(weights[last.input[2]])))
    for name in {pointwise.input[1], pointwise.input[2], last.input[1], last.input[2]}:
        if not any(name in node.input for node in graph.node):
            graph.initializer.remove(weights[name])
    return model


def _attribute(node, name: str, default):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _pointwise_as_matmul(node, weight: np.ndarray, bias: np.ndarray, size: int) -> tuple[list, list]:
    """1×1 conv [co, ci, 1, 1] -> Reshape [1, ci, size²], MatMul by W [co, ci], + bias, Reshape [1, co, size, size]."""
    from onnx import helper, numpy_helper

    if weight.shape[2:] != (1, 1) or _attribute(node, "group", 1) != 1 or any(s != 1 for s in _attribute(node, "strides", [1, 1])):
        raise RuntimeError(f"mask tail: {node.name} is not a plain 1x1 conv")
    c_out, c_in = weight.shape[:2]
    p = f"{node.name}_matmul"
    initializers = [
        numpy_helper.from_array(np.ascontiguousarray(weight[:, :, 0, 0]), f"{p}_weight"),
        numpy_helper.from_array(bias.reshape(c_out, 1), f"{p}_bias"),
        numpy_helper.from_array(np.array([1, c_in, size * size], np.int64), f"{p}_flat"),
        numpy_helper.from_array(np.array([1, c_out, size, size], np.int64), f"{p}_image"),
    ]
    nodes = [
        helper.make_node("Reshape", [node.input[0], f"{p}_flat"], [f"{p}_x"], name=f"{p}_reshape_in"),
        helper.make_node("MatMul", [f"{p}_weight", f"{p}_x"], [f"{p}_y"], name=p),
        helper.make_node("Add", [f"{p}_y", f"{p}_bias"], [f"{p}_yb"], name=f"{p}_bias_add"),
        helper.make_node("Reshape", [f"{p}_yb", f"{p}_image"], [node.output[0]], name=f"{p}_reshape_out"),
    ]
    return nodes, initializers


def _single_output_as_depthwise(node, weight: np.ndarray, bias: np.ndarray) -> tuple[list, list]:
    """k×k conv [1, ci, k, k] -> depthwise conv of the ci channels, ReduceSum over them, + bias."""
    from onnx import helper, numpy_helper

    c_out, c_in, k, _ = weight.shape
    if c_out != 1 or _attribute(node, "group", 1) != 1 or any(s != 1 for s in _attribute(node, "strides", [1, 1])):
        raise RuntimeError(f"mask tail: {node.name} is not a stride-1 conv to one channel")
    p = f"{node.name}_depthwise"
    initializers = [
        numpy_helper.from_array(np.ascontiguousarray(weight.reshape(c_in, 1, k, k)), f"{p}_weight"),
        numpy_helper.from_array(bias.reshape(1, 1, 1, 1), f"{p}_bias"),
        numpy_helper.from_array(np.array([1], np.int64), f"{p}_axis"),
    ]
    nodes = [
        helper.make_node("Conv", [node.input[0], f"{p}_weight"], [f"{p}_x"], name=p, group=c_in,
                         kernel_shape=[k, k], pads=list(_attribute(node, "pads", [k // 2] * 4)),
                         dilations=list(_attribute(node, "dilations", [1, 1]))),
        helper.make_node("ReduceSum", [f"{p}_x", f"{p}_axis"], [f"{p}_sum"], name=f"{p}_sum", keepdims=1),
        helper.make_node("Add", [f"{p}_sum", f"{p}_bias"], [node.output[0]], name=f"{p}_bias_add"),
    ]
    return nodes, initializers


def _replace(graph, node, replacement: tuple[list, list]) -> None:
    nodes, initializers = replacement
    at = list(graph.node).index(node)
    graph.node.remove(node)
    for offset, new in enumerate(nodes):
        graph.node.insert(at + offset, new)
    graph.initializer.extend(initializers)
