"""MobileFaceSwap: the identity injection network plus the heads shared by every identity.

Two ways to run one set of weights:
- training: `model(target, embedding, feature_map)`, every sample with its own identity
  (per-sample weights folded into conv groups), differentiable end to end through the IIN;
- deployment: `model.bake(embedding, feature_map)` -> a plain static `SwapNet` with the identity's
  weights as constants, for inference and export.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from facekit.errors import UserError
from student.config import StudentConfig
from student.iin import ModulatedPointwise, WeightPredictor
from student.idn import SwapNet, build_final_head, build_mask_head, identity_weight_shapes, run_idn

IDENTITY_MAP_SIZE = 7


def dynamic_conv(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, padding: int = 0, groups: int = 1) -> torch.Tensor:
    """Conv with one weight per sample ([B, Cout, Cin/g, k, k], folded into groups) or shared ([Cout, Cin/g, k, k])."""
    if weight.dim() == 4:
        return F.conv2d(x, weight, None, stride, padding, 1, groups)
    batch, channels, height, width = x.shape
    out = F.conv2d(
        x.reshape(1, batch * channels, height, width),
        weight.reshape(-1, *weight.shape[2:]),
        None,
        stride,
        padding,
        1,
        batch * groups,
    )
    return out.reshape(batch, -1, *out.shape[2:])


class MobileFaceSwap(nn.Module):
    def __init__(self, config: StudentConfig | None = None):
        super().__init__()
        self.config = config = config or StudentConfig()
        c, d = config.encoder_channels, config.identity_dim
        self.EncoderModulation = nn.ModuleList(ModulatedPointwise(c[i], c[i + 1], d) for i in range(5))
        self.DecoderModulation = nn.ModuleList(
            ModulatedPointwise(c_in, c_out, d) for c_in, c_out in zip(config.decoder_in, config.decoder_out)
        )
        self.predictor = WeightPredictor(c[:5], config.decoder_in, d)
        self.final = build_final_head(config.decoder_out[-1])
        self.mask = build_mask_head(config.mask_channels)

    # -- identity -> weights -------------------------------------------------------------------
    def identity_weights(self, embedding: torch.Tensor, feature_map: torch.Tensor) -> dict[str, torch.Tensor]:
        """The 18 identity conv weights, per sample: name -> [B, *static shape] (names as in `SwapNet`)."""
        self._check_identity_shapes(embedding, feature_map)
        embedding = F.normalize(embedding, dim=1)
        encoder_kernels, decoder_kernels = self.predictor(feature_map)
        weights: dict[str, torch.Tensor] = {}
        for i, (kernel, modulation) in enumerate(zip(encoder_kernels, self.EncoderModulation)):
            weights[f"Encoder.{i}.0.weight"] = kernel.unsqueeze(2)
            weights[f"Encoder.{i}.1.weight"] = modulation(embedding)
        for i, (kernel, modulation) in enumerate(zip(decoder_kernels, self.DecoderModulation)):
            weights[f"Decoder.{i}.0.weight"] = kernel.unsqueeze(2)
            weights[f"Decoder.{i}.1.weight"] = modulation(embedding)
        return weights

    # -- running the IDN -----------------------------------------------------------------------
    def swap(self, target: torch.Tensor, weights: Mapping[str, torch.Tensor],
             fuse: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the IDN with given identity weights (per-sample [B,...] or shared [...]) -> (image, mask);
        fuse=False: the generated image before the fusion mask is applied."""
        check_target(target)

        def level(prefix: str, stride: int, padding: int):
            dw, pw = weights[f"{prefix}.0.weight"], weights[f"{prefix}.1.weight"]
            return lambda x: dynamic_conv(dynamic_conv(x, dw, stride, padding, groups=x.shape[1]), pw)

        encoder = [level(f"Encoder.{i}", 2, 1) for i in range(5)]
        decoder = [level(f"Decoder.{i}", 1, 1) for i in range(4)]
        return run_idn(target, encoder, decoder, self.final, self.mask, fuse)

    def forward(
        self, target: torch.Tensor, embedding: torch.Tensor, feature_map: torch.Tensor, fuse: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training mode: sample b of `target` gets the identity (embedding[b], feature_map[b])."""
        if embedding.shape[0] != target.shape[0]:
            raise UserError(f"batch mismatch: {target.shape[0]} targets but {embedding.shape[0]} identities")
        return self.swap(target, self.identity_weights(embedding, feature_map), fuse)

    @torch.no_grad()
    def bake(self, embedding: torch.Tensor, feature_map: torch.Tensor) -> SwapNet:
        """One identity -> a static `SwapNet` (eval mode) whose convs hold that identity's weights."""
        check_identity_values(embedding, feature_map)
        if embedding.shape[0] != 1:
            raise UserError(f"bake takes one identity (batch 1), got a batch of {embedding.shape[0]}")
        was_training = self.training
        self.eval()
        weights = self.identity_weights(embedding, feature_map)
        self.train(was_training)
        net = SwapNet(self.config).to(device=embedding.device, dtype=self.final[1].weight.dtype)
        net.final.load_state_dict(self.final.state_dict())
        net.mask.load_state_dict(self.mask.state_dict())
        params = dict(net.named_parameters())
        for name, value in weights.items():
            params[name].copy_(value[0])
        return net.eval().requires_grad_(False)

    def _check_identity_shapes(self, embedding: torch.Tensor, feature_map: torch.Tensor) -> None:
        d = self.config.identity_dim
        if embedding.dim() != 2 or embedding.shape[1] != d:
            raise UserError(f"identity embedding must be [batch, {d}], got {list(embedding.shape)}")
        expected = (embedding.shape[0], d, IDENTITY_MAP_SIZE, IDENTITY_MAP_SIZE)
        if tuple(feature_map.shape) != expected:
            raise UserError(f"identity feature map must be {list(expected)}, got {list(feature_map.shape)}")


def check_target(target: torch.Tensor) -> None:
    """Shape checks the network needs (plain Python on static shapes: free under tracing/export)."""
    if target.dim() != 4 or target.shape[1] != 3:
        raise UserError(f"target must be a [batch, 3, H, W] RGB tensor in [0,1], got shape {list(target.shape)}")
    height, width = target.shape[-2:]
    if height % 32 or width % 32:
        raise UserError(f"target size {height}x{width} is not a multiple of 32 (the encoder halves it 5 times)")


def check_identity_values(embedding: torch.Tensor, feature_map: torch.Tensor) -> None:
    """Refuse identities that would silently produce garbage (NaN, or an all-zero embedding)."""
    if not torch.isfinite(embedding).all() or not torch.isfinite(feature_map).all():
        raise UserError("identity embedding or feature map contains NaN/inf (was the source face detected?)")
    if (embedding.norm(dim=-1) < 1e-6).any():
        raise UserError("identity embedding is all zeros: no identity to inject (check the source face)")


def identity_weight_names(config: StudentConfig) -> list[str]:
    return list(identity_weight_shapes(config))
