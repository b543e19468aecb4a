"""The frozen facial experts as the teacher sees them, and the ONE place images change range.

Diffusion images live in [-1, 1]; facekit experts take RGB in [0, 1] at any size (they resize and normalise
themselves). Training (identity of x0 and x̂0) and sampling (guidance, mask, identity similarity) both go
through `Experts`, so the preprocessing cannot drift between them (the official code's training fed ArcFace
differently from its sampling).
"""
from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import nn

from facekit.errors import UserError


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1,1] diffusion space → [0,1] expert space (no clamp: guidance needs gradients everywhere)."""
    return (x + 1) / 2


def to_model(images: torch.Tensor) -> torch.Tensor:
    """[0,1] images → [-1,1] diffusion space."""
    return images * 2 - 1


@dataclass
class Experts:
    """embedder: images → (L2-normalised embedding [B,512], feature map); parser: images → 19-class logits;
    gaze: EyeNet, grayscale 96×160 eye crops → (landmarks, (pitch, yaw)). parser and gaze are optional
    (their guidance is then off)."""

    embedder: nn.Module
    parser: nn.Module | None = None
    gaze: nn.Module | None = None

    def identity(self, x: torch.Tensor) -> torch.Tensor:
        """Identity embedding of diffusion-space images."""
        return self.embedder(to_unit(x))[0]

    def parse(self, x: torch.Tensor) -> torch.Tensor:
        return self.require_parser()(to_unit(x))

    def require_parser(self) -> nn.Module:
        if self.parser is None:
            raise UserError("semantic guidance / blending mask need a face parser: pass --parser FILE "
                            "(BiSeNet FaceParser.pth) or --experts DIR, or set the semantic weight to 0")
        return self.parser

    def require_gaze(self) -> nn.Module:
        if self.gaze is None:
            raise UserError("gaze guidance needs an eye-gaze expert: pass --gaze-model FILE (GazeEstimator.pt) "
                            "or --experts DIR, or set the gaze weight to 0")
        return self.gaze


def load_experts(experts_dir: str | None = None, arcface: str | None = None, parser: str | None = None,
                 gaze: str | None = None) -> Experts:
    """The teacher's experts: a small-experts folder and/or official weight files, each in any format the one
    expert loader (facekit.experts.expert_loader) reads; files override the folder's."""
    from facekit.experts.expert_loader import load_expert_set

    return Experts(*load_expert_set(experts_dir, arcface, parser, gaze))
