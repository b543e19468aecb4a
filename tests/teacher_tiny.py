"""Tiny randomly initialised teacher parts for fast tests (no trained weights, no files)."""
import torch

from facekit.experts.arcface import IRSEArcFace
from facekit.experts.bisenet import BiSeNet
from facekit.experts.eyenet import EyeNet
from facekit.experts.frozen import freeze
from teacher.experts import Experts
from teacher.unet import UNetConfig, UNetModel

TINY_UNET = UNetConfig(image_size=32, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                       attention_resolutions=(16,), num_head_channels=32)


def tiny_unet(seed: int = 0, config: UNetConfig = TINY_UNET) -> UNetModel:
    """Weights all non-zero (guided-diffusion zero-initialises output convs, which would make eps ≡ 0)."""
    torch.manual_seed(seed)
    model = UNetModel(config)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def tiny_experts(seed: int = 0, gaze: bool = False) -> Experts:
    torch.manual_seed(seed)
    embedder = freeze(IRSEArcFace(blocks=(1, 1, 1, 1), widths=(8, 8, 16, 16), input_size=112))
    parser = freeze(BiSeNet(width=0.0625, input_size=64))
    return Experts(embedder, parser, freeze(EyeNet(nstack=1, nfeatures=8, nlandmarks=8)) if gaze else None)
