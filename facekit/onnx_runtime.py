"""The one place ONNX Runtime sessions are made (export, verification, bench, the app, external swappers):
CPU provider, quiet logs, explicit thread counts and optimisation level. A user's file may instead run on
OpenVINO (`ENGINES`, facekit/openvino_session.py) behind the same two calls."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

ENGINES = ("onnxruntime", "openvino")
LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def session_options(level: str = "basic", threads: int = 1):
    """One intra-op thread by default: the bench's unit, and what leaves cores to decode and encode video."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def ort_session(model: str | Path | bytes, level: str = "basic", threads: int = 1, options=None,
                disabled_optimizers: Sequence[str] = ()):
    """A CPU session for a model file or serialized model bytes."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    extra = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
    return ort.InferenceSession(source, options or session_options(level, threads), providers=["CPUExecutionProvider"],
                                **extra)


def load_session(path: str | Path, level: str = "all", threads: int = 0, engine: str = "onnxruntime"):
    """A session for a user's ONNX file on `engine`, or one line saying it is not a loadable model."""
    from facekit.errors import UserError

    if engine not in ENGINES:
        raise UserError(f"--engine {engine}: not one of {', '.join(ENGINES)}")
    try:
        if engine == "openvino":
            from facekit.openvino_session import OpenVinoSession

            return OpenVinoSession(path, threads)
        return ort_session(path, level, threads)
    except Exception as err:  # each engine raises its own types for foreign/corrupt files
        raise UserError(f"{path}: not a loadable ONNX model for {engine} ({str(err).strip().splitlines()[0][:200]})") from None
