"""Teacher weights on disk: the official DiffFace `Model.pt`, and our own safetensors checkpoints.

Official files are read with `torch.load(weights_only=True)` (never executing pickled code) and their
architecture is inferred from the tensor shapes, so a file that does not match the configured model is
reported by what it looks like instead of a wall of missing keys. Our own files are safetensors weights
with the UNet config in the metadata; training state lives next to them (see teacher/train.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from facekit.errors import UserError
from facekit.files import atomic_write
from facekit.shipped import check_shipped

from .unet import UNetConfig, UNetModel


def infer_unet_config(shapes: dict[str, tuple[int, ...]], image_size: int) -> UNetConfig:
    """The structural hyperparameters a guided-diffusion UNet state dict implies (attention head count and
    image size cannot be read from shapes: image_size is given, heads keep the 64-channel default)."""
    try:
        model_channels = shapes["time_embed.0.weight"][1]
        in_channels = shapes["input_blocks.0.0.weight"][1]
        out_channels = shapes["out.2.weight"][0]
    except KeyError as err:
        raise UserError(f"not a DiffFace/guided-diffusion UNet state dict: no {err.args[0]!r}") from None
    n_out = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("output_blocks."))
    # The first output block holding an upsampling ResBlock closes the deepest level.
    first_up = min(i for i in range(n_out) if _up_index(shapes, i) is not None)
    num_res_blocks = first_up
    levels = n_out // (num_res_blocks + 1)
    mult = []
    for level in range(levels):
        block = (levels - 1 - level) * (num_res_blocks + 1)
        mult.append(shapes[f"output_blocks.{block}.0.out_layers.3.weight"][0] // model_channels)
    attention = set()
    for i in range(n_out):
        if f"output_blocks.{i}.1.qkv.weight" in shapes:
            level = levels - 1 - i // (num_res_blocks + 1)
            attention.add(image_size // 2 ** level)
    qkv = next((k for k in shapes if k.endswith(".qkv.weight")), None)
    head_channels = 64 if qkv is None or shapes[qkv][1] % 64 == 0 else -1
    return UNetConfig(image_size=image_size, model_channels=model_channels, channel_mult=tuple(mult),
                      num_res_blocks=num_res_blocks, attention_resolutions=tuple(sorted(attention, reverse=True)),
                      num_head_channels=head_channels, learn_sigma=out_channels == 2 * in_channels,
                      in_channels=in_channels)


def _up_index(shapes: dict[str, tuple[int, ...]], block: int) -> int | None:
    """Index of the upsampling ResBlock inside output block `block` (it follows the res/attn layers)."""
    for layer in (2, 1):
        if f"output_blocks.{block}.{layer}.in_layers.0.weight" in shapes:
            return layer
    return None


def _describe(config: UNetConfig) -> str:
    return (f"{config.model_channels} channels, channel_mult {tuple(config.channel_mult)}, "
            f"{config.num_res_blocks} res blocks, attention at {tuple(config.attention_resolutions)}")


def load_official(path: str | Path, config: UNetConfig) -> UNetModel:
    """Build `config`'s UNet and load the official DiffFace `Model.pt` into it with strict=True."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"official checkpoint {path} not found (DiffFace's Model.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file or one that needs arbitrary code to unpickle
        raise UserError(f"{path}: cannot be read as a plain tensor state dict ({type(err).__name__}: {err}); "
                        "only weights are loaded, never pickled code") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = build_for_state(state, config, path)
    model.load_state_dict(state, strict=True)
    return model


def build_for_state(state: dict[str, torch.Tensor], config: UNetConfig, source: str | Path) -> UNetModel:
    """The configured UNet, or a UserError naming how the weights differ from it."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in UNetModel(config).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        looks = infer_unet_config(found, config.image_size)
        official = looks.model_channels == 256 and looks.channel_mult == (1, 1, 2, 2, 4, 4)
        what = "the 256² official DiffFace model" if official else "a UNet with " + _describe(looks)
        raise UserError(f"{source}: this looks like {what}; your config says {_describe(config)}. "
                        "Use the matching --unet preset (official_256 for Model.pt) or config file")
    return UNetModel(config)


def save_weights(model: torch.nn.Module, path: str | Path, metadata: dict | None = None) -> None:
    """Atomic safetensors write with the UNet config (and anything in `metadata`) as JSON metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"unet_config": json.dumps(model.config.to_dict())}
    meta.update({k: json.dumps(v) for k, v in (metadata or {}).items()})
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda temp: save_file(tensors, str(temp), metadata=meta))


def read_metadata(path: str | Path) -> dict:
    try:
        with safe_open(str(path), "pt") as f:
            return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    except (SafetensorError, ValueError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({err})") from None


def load_teacher(path: str | Path, device: str | torch.device = "cpu") -> tuple[UNetModel, dict]:
    """A teacher saved by `save_weights` (a training checkpoint's EMA or a snapshot) and its metadata."""
    path = Path(path)
    check_shipped(path)
    if not path.is_file():
        raise UserError(f"teacher weights {path} not found (train one with `distilswap teacher train`)")
    if path.suffix in (".pt", ".pth"):
        raise UserError(f"{path}: official .pt checkpoints load with --official {path} and a --unet preset")
    metadata = read_metadata(path)
    if "unet_config" not in metadata:
        raise UserError(f"{path}: no unet_config in its metadata; not a teacher saved by distilswap")
    model = UNetModel(UNetConfig.from_dict(metadata["unet_config"]))
    with safe_open(str(path), "pt", device="cpu") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"{path}: its tensors do not fit its unet_config ({str(err).splitlines()[0]})") from None
    return model.to(device).eval(), metadata
