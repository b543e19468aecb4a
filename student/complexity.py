"""Parameters and multiply-accumulates, counted two independent ways.

The paper's "FLOPs" are multiply-accumulates (MACs). We count them with torch's FlopCounterMode
(dispatcher level; it reports 2 FLOPs per MAC, so we halve it) and with fvcore (TorchScript trace; it
reports MACs). Both count convs, linears, bilinear upsampling (4 per output element) and inference
BatchNorm (2 per element, affine), so the two agree and match the paper's 0.33 G at 224².
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _upsample_flops(*args, out_shape=None, **kwargs) -> int:
    return 2 * 4 * _numel(out_shape)  # in FLOPs (2 per MAC), like every other FlopCounterMode formula


def _batch_norm_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * (2 if weight_shape is not None else 1) * _numel(input_shape)


_EXTRA_FORMULAS = {
    aten.upsample_bilinear2d: _upsample_flops,
    aten._native_batch_norm_legit_no_training: _batch_norm_flops,
    aten.native_batch_norm: _batch_norm_flops,
}


@dataclass
class MacCount:
    """MACs of one forward: totals from both counters, and fvcore's per-module breakdown."""

    flop_counter_macs: int
    fvcore_macs: int
    by_module: dict[str, int]

    @property
    def macs(self) -> int:
        return self.fvcore_macs

    @property
    def flops(self) -> int:
        return 2 * self.fvcore_macs


def count_params(module: nn.Module, include_buffers: bool = False) -> int:
    """Trainable-or-not parameters; with buffers (BN running stats) it matches the official file sizes."""
    total = sum(p.numel() for p in module.parameters())
    if include_buffers:
        total += sum(b.numel() for name, b in module.named_buffers() if not name.endswith("num_batches_tracked"))
    return total


@torch.no_grad()
def count_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> MacCount:
    with warnings.catch_warnings():  # fvcore scripts its focal losses at import: torch's jit.script deprecation
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
        import fvcore.nn

    was_training = module.training
    module.eval()
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
        with counter:
            module(*inputs)
        analysis = fvcore.nn.FlopCountAnalysis(module, inputs)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        by_module = {name: int(n) for name, n in analysis.by_module().items() if name and "." in name}
        return MacCount(counter.get_total_flops() // 2, int(analysis.total()), by_module)
    finally:
        module.train(was_training)


def top_layers(count: MacCount, k: int = 10) -> list[tuple[str, int]]:
    """The k leaf modules with most MACs (parents are skipped so nothing is counted twice)."""
    names = set(count.by_module)
    leaves = Counter({n: m for n, m in count.by_module.items() if not any(o.startswith(n + ".") for o in names)})
    return leaves.most_common(k)
