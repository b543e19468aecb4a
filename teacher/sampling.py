"""Guided, batched DiffFace sampling with target-preserving blending.

Per step ONE UNet forward with x_t requiring grad gives eps and the variance; the guidance energy G of
x_in = √(1−ᾱ_t)·x̂0 + (1−√(1−ᾱ_t))·x_t is differentiated through that same forward, and the same eps and
variance build the shifted mean μ' = μ − Σ·∇G (DDPM) or the corrected eps' = eps + √(1−ᾱ_t)·∇G (DDIM).
The official code runs the UNet twice per step and one pair at a time; the result is the same.

Blending: M is the hard mask of the kept classes on the target; at the step t → t−1 (T steps in all)
M_t = min(1, (T − t)/T̂)·M and x_{t−1} ← x̂_{t−1}·M_t + q(x_targ at t−1)·(1 − M_t); the output is the hard
composite x_targ·(1−M) + x_0·M. The official code noises the target to t (one step too noisy for x_{t−1})
and its DDIM path does not blend; both samplers blend here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import yaml

from facekit.bisenet import KEPT_CLASSES, class_mask
from facekit.errors import UserError

from . import guidance
from .diffusion import GaussianDiffusion, extract
from .experts import Experts

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


@dataclass
class SwapConfig:
    """Sampling knobs; the presets (teacher/presets/swap_*.yaml) are the paper's and the official code's."""

    respacing: int = 100  # sampling steps of the respaced process
    skip: int = 25  # first steps skipped: start from the target noised to step respacing−skip
    sampler: str = "ddpm"  # or "ddim"
    eta: float = 0.0  # DDIM stochasticity
    id_weight: float = 6000.0
    sem_weight: float = 200.0
    gaze_weight: float = 200.0
    gaze_window: tuple[int, int] = (10, 50)  # gaze guidance only while lo < t < hi
    target_mse_weight: float = 50.0
    views: int = 8  # extending augmentation for the identity guidance
    mask_ramp: int = 45  # T̂
    schedule: str = "linear"
    diffusion_steps: int = 1000

    def diffusion(self, learn_sigma: bool = True) -> GaussianDiffusion:
        return GaussianDiffusion.create(self.schedule, self.diffusion_steps, self.respacing, learn_sigma)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["gaze_window"] = list(self.gaze_window)
        return data


def load_swap_config(preset: str = "official", overrides: dict | None = None) -> SwapConfig:
    """A preset name (paper, official, ...) or a YAML file, then non-None overrides."""
    path = Path(preset)
    if not path.suffix:
        path = PRESETS_DIR / f"swap_{preset}.yaml"
    if not path.is_file():
        names = sorted(p.stem[len("swap_"):] for p in PRESETS_DIR.glob("swap_*.yaml"))
        raise UserError(f"unknown sampling preset {preset!r}: use one of {names} or a YAML file")
    data = yaml.safe_load(path.read_text()) or {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in fields(SwapConfig)}
    unknown = set(data) - known
    if unknown:
        raise UserError(f"{path}: unknown sampling settings {sorted(unknown)}; known: {sorted(known)}")
    if "gaze_window" in data:
        data["gaze_window"] = tuple(data["gaze_window"])
    config = SwapConfig(**data)
    if not 0 <= config.skip < config.respacing:
        raise UserError(f"skip must be in [0, respacing): got skip={config.skip}, respacing={config.respacing}")
    if config.sampler not in ("ddpm", "ddim"):
        raise UserError(f"sampler must be 'ddpm' or 'ddim', got {config.sampler!r}")
    return config


@dataclass
class SwapResult:
    swap: torch.Tensor  # [B,3,H,W] in [-1,1], hard composite
    mask: torch.Tensor  # [B,1,H,W] {0,1}: where the swap may differ from the target
    valid: torch.Tensor  # [B] bool: False where sampling produced NaN/inf (drop that pair)


def guided_swap(model: torch.nn.Module, experts: Experts, source: torch.Tensor, target: torch.Tensor,
                config: SwapConfig, landmarks: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None, progress: bool = False,
                autocast: torch.dtype | None = None) -> SwapResult:
    """Swap the identity of `source` onto `target` (both [B,3,H,W] in [-1,1]) for a batch of pairs.

    `mask` (the kept-classes mask of the target) is computed with the parser when not given; `landmarks`
    (the target's, for facekit's eye crops) are needed only for gaze guidance. `autocast` (e.g. bf16 on a
    GPU) applies to the UNet only; guidance and the update stay in float32.
    """
    diffusion = config.diffusion(learn_sigma=getattr(getattr(model, "config", None), "learn_sigma", True))
    device = target.device
    b = target.shape[0]
    with torch.no_grad():
        source_embedding = experts.identity(source)
        target_logits = experts.parse(target) if (config.sem_weight or mask is None) else None
        if mask is None:
            mask = class_mask(target_logits, KEPT_CLASSES)
        use_gaze = bool(config.gaze_weight)
        if use_gaze and landmarks is None:
            raise UserError("gaze guidance needs the target's landmarks; set the gaze weight to 0 to run without")
        target_gaze = experts.gaze_of(target, landmarks) if use_gaze else None
    mask = mask.to(target)

    steps = diffusion.num_timesteps - config.skip
    start = torch.full((b,), steps - 1, device=device, dtype=torch.long)
    x = diffusion.q_sample(target, start, _randn(target, generator))
    valid = torch.ones(b, dtype=torch.bool, device=device)
    guided = any((config.id_weight, config.sem_weight, config.gaze_weight, config.target_mse_weight))
    iterator = range(steps - 1, -1, -1)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="sampling", unit="step", leave=False)
    for i in iterator:
        t = torch.full((b,), i, device=device, dtype=torch.long)
        x_t = x.detach().requires_grad_(guided)
        with torch.set_grad_enabled(guided):
            with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                output = diffusion.run_model(model, x_t, t, source_embedding)
            pred = diffusion.predict(output, x_t, t)
            grad = torch.zeros_like(x_t)
            if guided:
                energy = _energy(diffusion, experts, config, x_t, t, pred.pred_xstart, source_embedding,
                                 target, target_logits, landmarks, target_gaze, generator)
                grad = torch.autograd.grad(energy.sum(), x_t)[0]
        if config.sampler == "ddpm":
            mean = pred.mean.detach() - pred.variance.detach() * grad
            x_prev = diffusion.ddpm_step(x, t, mean, pred.log_variance.detach(), _randn(x, generator))
        else:
            eps = pred.eps.detach() + extract(diffusion.sqrt_one_minus_alphas_cumprod, t, x) * grad
            x_prev = diffusion.ddim_step(x, t, eps, config.eta, _randn(x, generator))
        background = diffusion.q_sample(target, t - 1, _randn(x, generator)) if i > 0 else target
        m_t = min(1.0, (steps - i) / config.mask_ramp) * mask
        x = x_prev * m_t + background * (1 - m_t)
        finite = torch.isfinite(x).flatten(1).all(dim=1)
        valid &= finite
        x = torch.where(finite[:, None, None, None], x, target)  # a diverged pair must not poison the batch
    swap = target * (1 - mask) + x.clamp(-1, 1) * mask
    return SwapResult(swap=swap.detach(), mask=mask, valid=valid)


def _energy(diffusion: GaussianDiffusion, experts: Experts, config: SwapConfig, x_t: torch.Tensor, t: torch.Tensor,
            pred_xstart: torch.Tensor, source_embedding: torch.Tensor, target: torch.Tensor,
            target_logits: torch.Tensor | None, landmarks: torch.Tensor | None, target_gaze: torch.Tensor | None,
            generator: torch.Generator | None) -> torch.Tensor:
    """Weighted guidance energy per sample on x_in = √(1−ᾱ)·x̂0 + (1−√(1−ᾱ))·x_t."""
    fac = extract(diffusion.sqrt_one_minus_alphas_cumprod, t, x_t)
    x_in = pred_xstart * fac + x_t * (1 - fac)
    energy = torch.zeros(x_t.shape[0], device=x_t.device)
    if config.id_weight:
        energy = energy + config.id_weight * guidance.identity_loss(experts, x_in, source_embedding, config.views, generator)
    if config.sem_weight:
        energy = energy + config.sem_weight * guidance.semantic_loss(experts, x_in, target_logits)
    lo, hi = config.gaze_window
    if config.gaze_weight and lo < int(t[0]) < hi:
        energy = energy + config.gaze_weight * guidance.gaze_loss(experts, x_in, landmarks, target_gaze)
    if config.target_mse_weight:
        energy = energy + config.target_mse_weight * guidance.target_mse(x_in, target)
    return energy


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)


def identity_similarity(experts: Experts, source: torch.Tensor, swap: torch.Tensor) -> torch.Tensor:
    """cos(D_I(source), D_I(swap)) per pair: what the pairs record and the student's reweighting uses."""
    with torch.no_grad():
        return (experts.identity(source) * experts.identity(swap)).sum(dim=1)
