"""Distillation losses (SPEC §3), every one per sample ([B]) so the reweighting coefficient a can scale the
teacher-matching terms pair by pair:

    a·(λ_l1·L1 + λ_perc·perceptual)(student, teacher) + a·λ_image·L1(generated image, teacher)
    + λ_id·(1 − cos(D_I(src), D_I(student))) + λ_mask·L_mask

The weak mask loss only says where the fusion mask must be 0 (the target's background): the mask is never told
where the face is, the reconstruction terms decide that. The image term is ours, not the paper's: with the
output terms alone the fusion mask closes (M → 0, the student copies the target) before the generated image is
any good, and a closed mask passes no gradient to the image branch again. Supervising the generated image
before fusion keeps it learning whatever the mask does (λ_image = 0 is the paper's loss).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from facekit.experts.arcface import imagenet_normalize, resize_to
from facekit.errors import UserError
from facekit.experts.frozen import freeze

log = logging.getLogger(__name__)

# relu1_2, relu2_2, relu3_3, relu4_3 of torchvision's vgg16().features
VGG_LAYERS = (3, 8, 15, 22)


@dataclass(frozen=True)
class LossWeights:
    """The paper does not give these numbers in the text we have (SPEC §3); λ_l1 = λ_perc = 1 keep the
    teacher-matching terms at the scale of a. Identity, mask and image weights are ours, from the synthetic
    world: at λ_id = 1 (or 0.3) the identity term wrecks the generated image, at λ_mask = 1 the mask shuts
    before the face is learned; with λ_image = 0 the mask shuts too (the student copies the target)."""

    l1: float = 1.0
    perceptual: float = 1.0
    image: float = 1.0
    identity: float = 0.1
    mask: float = 0.1


def l1_per_sample(prediction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return (prediction - reference).abs().flatten(1).mean(1)


class VGGPerceptual(nn.Module):
    """L1 between VGG-16 activations (the classic perceptual loss); only from a local weights file."""

    def __init__(self, weights_path: str | Path):
        super().__init__()
        from torchvision.models import vgg16

        path = Path(weights_path)
        if not path.is_file():
            raise UserError(f"{path}: no such VGG-16 weights file (torchvision vgg16 state dict)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UserError(f"{path}: not a loadable torch state dict ({type(err).__name__})") from None
        features = vgg16(weights=None).features[: VGG_LAYERS[-1] + 1]
        prefix = "features."
        wanted = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} if isinstance(state, dict) else {}
        try:
            features.load_state_dict({k: v for k, v in wanted.items() if k in features.state_dict()}, strict=True)
        except RuntimeError as err:
            raise UserError(f"{path}: not torchvision VGG-16 weights ({str(err).splitlines()[0]})") from None
        self.features = freeze(features)

    def forward(self, prediction: torch.Tensor, reference: torch.Tensor,
                prediction_map: torch.Tensor | None = None) -> torch.Tensor:
        total = prediction.new_zeros(prediction.shape[0])
        x, y = imagenet_normalize(prediction), imagenet_normalize(reference)
        for index, layer in enumerate(self.features):
            x, y = layer(x), layer(y)
            if index in VGG_LAYERS:
                total = total + l1_per_sample(x, y)
        return total / len(VGG_LAYERS)


class ExpertPerceptual(nn.Module):
    """Without VGG weights: L1 between the frozen experts' features (identity map F, parser logits). They are
    face-specific, already loaded, and trained on the same faces, so nothing is downloaded."""

    def __init__(self, embedder: nn.Module, parser: nn.Module | None = None):
        super().__init__()
        self.embedder, self.parser = embedder, parser

    def forward(self, prediction: torch.Tensor, reference: torch.Tensor,
                prediction_map: torch.Tensor | None = None) -> torch.Tensor:
        """prediction_map: D_I's feature map of the prediction when the caller already has it (the identity
        loss runs the same forward)."""
        with torch.no_grad():
            reference_map = self.embedder(reference)[1]
        if prediction_map is None:
            prediction_map = self.embedder(prediction)[1]
        total = l1_per_sample(prediction_map, reference_map)
        if self.parser is not None:
            with torch.no_grad():
                reference_logits = self.parser(reference)
            total = total + l1_per_sample(self.parser(prediction), reference_logits)
        return total


def build_perceptual(vgg_weights: str | None, embedder: nn.Module, parser: nn.Module | None) -> tuple[nn.Module, str]:
    if vgg_weights:
        log.info("perceptual loss: VGG-16 from %s", vgg_weights)
        return VGGPerceptual(vgg_weights), "vgg16"
    kind = "expert features (identity map" + (" + parser logits)" if parser is not None else ")")
    log.info("perceptual loss: %s; pass --vgg-weights FILE for VGG-16", kind)
    return ExpertPerceptual(embedder, parser), kind


def identity_loss(embedding: torch.Tensor, source_embedding: torch.Tensor) -> torch.Tensor:
    """1 − cos(D_I(src), D_I(output)) per sample, from the two embeddings."""
    return 1.0 - (F.normalize(embedding.float(), dim=1) * F.normalize(source_embedding.float(), dim=1)).sum(1)


@torch.no_grad()
def background(target: torch.Tensor, teacher_swap: torch.Tensor, blend_mask: torch.Tensor,
               parser: nn.Module | None) -> torch.Tensor:
    """[B,1,H,W] where the fusion mask must keep the target: pixels the parser calls background in both the
    target and the teacher's swap; without a parser, outside the teacher's blend mask."""
    if parser is None:
        return (blend_mask < 0.5).float()
    from facekit.experts.bisenet import BACKGROUND_CLASSES, class_mask

    size = target.shape[-2:]
    masks = [resize_to(class_mask(parser(x), BACKGROUND_CLASSES), size, mode="nearest") for x in (target, teacher_swap)]
    return masks[0] * masks[1]


def mask_loss(mask: torch.Tensor, keep_target: torch.Tensor) -> torch.Tensor:
    """Mean fusion-mask value over the background pixels, per sample (0 when a sample has no background)."""
    keep_target = resize_to(keep_target, mask.shape[-2:], mode="nearest")
    return (mask * keep_target).flatten(1).sum(1) / keep_target.flatten(1).sum(1).clamp(min=1.0)
