"""DiffFace's identity-conditional UNet in guided-diffusion's layout.

Parameter names and shapes follow openai/guided-diffusion's `UNetModel` exactly (so the official DiffFace
`Model.pt` loads with `strict=True`), restricted to the options DiffFace uses: scale-shift norm (AdaGN),
residual-block up/down-sampling, legacy (heads-then-qkv) attention order, learned sigma. The identity
embedding is mapped by `id_embed` and added to the timestep embedding; nothing else sees it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

ID_DIM = 512
NORM_GROUPS = 32


@dataclass(frozen=True)
class UNetConfig:
    """Hyperparameters with guided-diffusion's flag names; defaults are the official DiffFace model."""

    image_size: int = 256
    model_channels: int = 256
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # feature-map sizes in pixels, as the official flags
    num_head_channels: int = 64  # -1: use num_heads instead
    num_heads: int = 4
    dropout: float = 0.0
    learn_sigma: bool = True
    in_channels: int = 3
    use_checkpoint: bool = False  # gradient checkpointing of every block while training

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def attention_downsample_rates(self) -> set[int]:
        return {self.image_size // res for res in self.attention_resolutions}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["channel_mult"] = list(self.channel_mult)
        data["attention_resolutions"] = list(self.attention_resolutions)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "UNetConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("channel_mult", "attention_resolutions"):
            if key in known:
                known[key] = tuple(int(v) for v in known[key])
        return cls(**known)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, [cos | sin] as guided-diffusion orders it (the official weights expect this)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in at least float32 whatever the activations' dtype (half-precision statistics drift)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(torch.promote_types(x.dtype, torch.float32))).type(x.dtype)


def normalization(channels: int) -> nn.GroupNorm:
    return GroupNorm32(NORM_GROUPS, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Residual branches start as identities, as in guided-diffusion."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with AdaGN conditioning (scale, shift from the embedding) and optional 2x resampling."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.up, self.down = up, down
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(normalization(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                        zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # Resampling sits between the activation and the conv, as in guided-diffusion.
        h = self.in_layers[:-1](x)
        h = self.in_layers[-1](self._resample(h))
        x = self._resample(x)
        scale, shift = self.emb_layers(emb).type(h.dtype)[..., None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        h = self.out_layers[1:](h)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with the legacy channel order: qkv is split into heads first, then q/k/v."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1):
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        if channels % self.num_heads:
            raise ValueError(f"attention channels {channels} not divisible into {self.num_heads} heads")
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        length = x.shape[-1]
        qkv = self.qkv(self.norm(x)).reshape(b * self.num_heads, 3 * c // self.num_heads, length)
        q, k, v = qkv.transpose(1, 2).chunk(3, dim=-1)  # each [b*heads, length, ch]
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(ch)) v, the legacy scaling
        h = h.transpose(1, 2).reshape(b, c, length)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class EmbedSequential(nn.Sequential):
    """A block of layers; residual blocks also receive the conditioning embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, (ResBlock, AttentionBlock)) else layer(x)
        return x


class UNetModel(nn.Module):
    """eps (and variance interpolation, if learned) from (x_t, t, identity embedding)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        mc = config.model_channels
        emb_dim = mc * 4
        attn_rates = config.attention_downsample_rates

        def attention(channels: int) -> AttentionBlock:
            return AttentionBlock(channels, config.num_heads, config.num_head_channels)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.id_embed = nn.Sequential(nn.Linear(ID_DIM, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        ch = int(config.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, config.dropout, int(mult * mc))]
                ch = int(mult * mc)
                if ds in attn_rates:
                    layers.append(attention(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(ResBlock(ch, emb_dim, config.dropout, ch, down=True)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = EmbedSequential(ResBlock(ch, emb_dim, config.dropout), attention(ch),
                                            ResBlock(ch, emb_dim, config.dropout))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, config.dropout, int(mc * mult))]
                ch = int(mc * mult)
                if ds in attn_rates:
                    layers.append(attention(ch))
                if level and i == config.num_res_blocks:
                    layers.append(ResBlock(ch, emb_dim, config.dropout, ch, up=True))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(ch, config.out_channels, 3, padding=1)))

    def embed(self, timesteps: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """Conditioning vector: timestep embedding + identity embedding (DiffFace's only identity path)."""
        weights = next(self.time_embed.parameters())  # a float64 UNet (exactness tests) embeds in float64
        t_emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(weights.dtype))
        return t_emb + self.id_embed(identity.to(t_emb.dtype))

    def _block(self, block: EmbedSequential, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.config.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """x [B,3,H,W] in [-1,1] (noised), timesteps [B] on the ORIGINAL 1000-step scale, identity [B,512]."""
        emb = self.embed(timesteps, identity)
        skips = []
        h = x
        for block in self.input_blocks:
            h = self._block(block, h, emb)
            skips.append(h)
        h = self._block(self.middle_block, h, emb)
        for block in self.output_blocks:
            h = self._block(block, torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def load_unet_config(preset: str) -> UNetConfig:
    """A preset name (official_256, reference_small, demo_64) or a YAML file of UNetConfig fields."""
    from facekit.config import read_yaml_mapping, settings
    from facekit.errors import UserError

    presets = Path(__file__).resolve().parent / "presets"
    path = Path(preset) if Path(preset).suffix else presets / f"unet_{preset}.yaml"
    if not path.is_file():
        names = sorted(p.stem[len("unet_"):] for p in presets.glob("unet_*.yaml"))
        raise UserError(f"unknown UNet preset {preset!r}: use one of {names} or a YAML file")
    return settings(UNetConfig, read_yaml_mapping(path, "UNet settings"), str(path), "UNet settings")
