"""Frozen experts: no gradients to their weights, BatchNorm/Dropout locked in eval mode.

Experts sit inside trainable models (teacher, student, distillation wrappers); a parent's `.train()` would
otherwise switch their BatchNorm to batch statistics and silently change every embedding.
"""
from __future__ import annotations

from torch import nn


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def freeze(module: nn.Module) -> nn.Module:
    """Freeze `module` in place (and return it); gradients still flow through it to its input."""
    module.requires_grad_(False)
    module.eval()
    for sub in module.modules():
        sub.train = _stay_in_eval.__get__(sub)
    return module


def is_frozen(module: nn.Module) -> bool:
    return not module.training and not any(p.requires_grad for p in module.parameters())
