"""An ONNX file run by OpenVINO's CPU plugin behind ONNX Runtime's two calls (`get_inputs`, `run`), so every
swapper takes either engine.

Why a second engine: on x86 CPUs OpenVINO's oneDNN kernels run the baked student's depthwise and 1×1
convolutions faster than ONNX Runtime's, from the same file and to within 1e-6 (`distilswap bench` measures
both in the same rounds). It is a desktop engine; phones keep the `.onnx`/`.ort`/Core ML files.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# OpenVINO runs f32 graphs in bf16 on CPUs with AMX unless told otherwise; the fp32 engine must stay fp32.
FP32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}


@dataclass(frozen=True)
class Port:
    """An input or output as ONNX Runtime describes it: a name, a shape (a string for a free dimension), a type."""

    name: str
    shape: list
    type: str


class OpenVinoSession:
    """A compiled model with one infer request (not thread-safe, like one ORT session per thread in the app)."""

    def __init__(self, path: str | Path, threads: int = 0):
        config = dict(FP32_CONFIG, **({"INFERENCE_NUM_THREADS": threads} if threads else {}))
        self._compiled = _core().compile_model(str(path), "CPU", config)
        self._request = self._compiled.create_infer_request()

    def get_inputs(self) -> list[Port]:
        return [_port(p) for p in self._compiled.inputs]

    def get_outputs(self) -> list[Port]:
        return [_port(p) for p in self._compiled.outputs]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self._request.infer(feeds)  # copies the outputs out of the request's buffers
        outputs = self._compiled.outputs
        wanted = output_names or [p.any_name for p in outputs]
        by_name = {p.any_name: results[p] for p in outputs}
        return [by_name[name] for name in wanted]


@functools.cache
def _core():
    """One OpenVINO Core for the process, never released. Its CPU plugin installs a signal stack for the thread
    that loads it; a Core released with its last model unloaded the plugin and left that stack dangling, and the
    next Ctrl-C (Python's handlers run on the signal stack) crashed the process."""
    import openvino as ov

    return ov.Core()


def _port(port) -> Port:
    shape = [d.get_length() if d.is_static else f"d{i}" for i, d in enumerate(port.get_partial_shape())]
    return Port(port.any_name, shape, f"tensor({port.get_element_type().to_string()})")
