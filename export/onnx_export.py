"""The student as ONNX graphs: the injector, the weights-as-inputs swapper, and baked swappers.

The 18 identity weights carry the same names everywhere (`Encoder.i.0.weight`, ...): outputs of the
injector, inputs of the dynamic swapper, initializers of a baked swapper. So an app can run the
injector once and hand its outputs to `SessionOptions.add_initializer` on any baked file, getting a
new identity at baked speed without re-exporting (`identity_session`).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from export.mask_tail import rewrite_mask_tail
from export.metadata import set_onnx_metadata
from facekit.onnx_runtime import ort_session, session_options
from student.idn import SwapNet, identity_weight_shapes
from student.model import MobileFaceSwap, identity_weight_names

OPSET = 20
SWAP_OUTPUTS = ("image", "mask")


class Injector(nn.Module):
    """(embedding [1,D], feature_map [1,D,7,7]) -> the 18 weights with their static shapes (no batch)."""

    def __init__(self, model: MobileFaceSwap):
        super().__init__()
        self.model = model
        self.names = identity_weight_names(model.config)

    def forward(self, embedding: torch.Tensor, feature_map: torch.Tensor) -> tuple[torch.Tensor, ...]:
        weights = self.model.identity_weights(embedding, feature_map)
        return tuple(weights[name][0] for name in self.names)


class DynamicSwapper(nn.Module):
    """(target, *18 weights) -> (image, mask): one graph for every identity, weights as inputs."""

    def __init__(self, model: MobileFaceSwap):
        super().__init__()
        self.model = model
        self.names = identity_weight_names(model.config)

    def forward(self, target: torch.Tensor, *weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.swap(target, dict(zip(self.names, weights)))


def export_graph(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    metadata: Mapping[str, str],
    dynamic_shapes: object = None,
) -> Path:
    """One self-contained .onnx file (no external .data: phones load a single file)."""
    path = Path(path)
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    set_onnx_metadata(path, metadata)
    return path


def export_injector(model: MobileFaceSwap, path: str | Path, metadata: Mapping[str, str]) -> Path:
    d = model.config.identity_dim
    inputs = (torch.nn.functional.normalize(torch.randn(1, d), dim=1), torch.randn(1, d, 7, 7))
    names = identity_weight_names(model.config)
    return export_graph(Injector(model), inputs, path, ("embedding", "feature_map"), names, metadata)


def export_dynamic(model: MobileFaceSwap, path: str | Path, metadata: Mapping[str, str], flexible_size: bool = True) -> Path:
    """Weights as inputs; with `flexible_size` the target's height/width are free (multiples of 32)."""
    r = model.config.resolution
    shapes = identity_weight_shapes(model.config)
    weights = tuple(torch.randn(shape) * 0.1 for shape in shapes.values())
    dynamic = None
    if flexible_size:
        height, width = torch.export.Dim("height_32", min=1, max=64), torch.export.Dim("width_32", min=1, max=64)
        dynamic = ({2: 32 * height, 3: 32 * width}, tuple({} for _ in shapes))
    return export_graph(
        DynamicSwapper(model), (torch.rand(1, 3, r, r), *weights), path, ("target", *shapes), SWAP_OUTPUTS, metadata,
        dynamic_shapes=dynamic,
    )


def export_baked(net: SwapNet, path: str | Path, metadata: Mapping[str, str], resolution: int | None = None) -> Path:
    """Identity weights as constants, batch 1 and a fixed size, the mask's tail in ONNX Runtime's faster form
    (export/mask_tail.py); checks the stable initializer names."""
    import onnx

    r = resolution or net.config.resolution
    export_graph(net, (torch.rand(1, 3, r, r),), path, ("target",), SWAP_OUTPUTS, metadata)
    onnx.save(rewrite_mask_tail(onnx.load(str(path)), r), str(path))
    problems = check_identity_initializers(path, identity_weight_shapes(net.config))
    if problems:
        raise RuntimeError(f"{path}: identity weights not swappable by name: {'; '.join(problems)}")
    return Path(path)


def check_identity_initializers(path: str | Path, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Each identity weight must be an initializer of its static shape, used by nothing but its conv."""
    import onnx

    graph = onnx.load(str(path)).graph
    found = {init.name: tuple(init.dims) for init in graph.initializer}
    problems = []
    for name, shape in shapes.items():
        if name not in found:
            problems.append(f"{name} missing")
        elif found[name] != tuple(shape):
            problems.append(f"{name} has shape {list(found[name])}, expected {list(shape)}")
    return problems


# -- ONNX Runtime ---------------------------------------------------------------------------------

def identity_session(baked_path: str | Path, weights: Mapping[str, np.ndarray], level: str = "all", threads: int = 1):
    """A baked swapper with another identity's weights swapped in (e.g. the injector's outputs)."""
    import onnxruntime as ort

    options = session_options(level, threads)
    values = {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value, dtype=np.float32)) for name, value in weights.items()}
    for name, value in values.items():
        options.add_initializer(name, value)
    session = ort_session(baked_path, options=options)
    session._distilswap_initializers = values  # the session reads them lazily: keep them alive with it
    return session


def run_swapper(session, target: np.ndarray, weights: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    feeds = {"target": np.ascontiguousarray(target, dtype=np.float32)}
    feeds.update({name: np.ascontiguousarray(value, dtype=np.float32) for name, value in (weights or {}).items()})
    image, mask = session.run(list(SWAP_OUTPUTS), feeds)
    return image, mask
