"""Guided, batched DiffFace sampling with target-preserving blending.

Per step ONE UNet forward with x_t requiring grad gives eps and the variance; the guidance energy G of
x_in = √(1−ᾱ_t)·x̂0 + (1−√(1−ᾱ_t))·x_t is differentiated through that same forward, and the same eps and
variance build the shifted mean μ' = μ − Σ·∇G (DDPM) or the corrected eps' = eps + √(1−ᾱ_t)·∇G (DDIM).
The official code runs the UNet twice per step (the second time at its cond_fn's timestep, which round-trips
to the same t for every respacing of 1000 steps into 10…500) and one pair at a time; the result is the same.

Blending: M is the hard mask of the kept classes on the target; at the step t → t−1 (T steps in all)
M_t = min(1, (T − t − delay)/T̂)·M and x_{t−1} ← x̂_{t−1}·M_t + q(x_targ at t or t−1)·(1 − M_t); the output
is the hard composite x_targ·(1−M) + x_final·M (`blend: never` turns both off, for ablations).

`SwapConfig`'s defaults are the behaviour we believe is right; the `official` preset switches every one
of them to what hxngiee/DiffFace does (tests/test_official_sampler.py re-derives its step). Gaze is always
the original's sum of a per-eye L1 (an average of the two eyes, as this project had it, let opposite errors
cancel).

| option | ours (default) | official | why ours |
|---|---|---|---|
| clip_denoised | True | False | the posterior mean of an out-of-range x̂0 pushes x_t off the data range |
| embedder_resize | antialias | nearest | nearest aliases 256→112; the teacher is trained on antialiased embeddings |
| embedder_mask | False | True | the mask hides the swap's own face shape from the identity loss |
| parser_normalization | single | double | the parser was trained on ImageNet normalisation only |
| parser_resize | antialias | official | one resize of the logits instead of two |
| sem_reduction | mean | sum | λ_sem then means the same whatever the number of kept classes |
| gaze_crop | subpixel | integer | differentiable in the eye box and exact at any image size |
| blend_noise | t-1 | t | x_{t−1} is blended with the target at its own noise level (clean at the end) |
| mask_ramp_delay | 0 | 1 | the ramp reaches M at T̂ steps, not T̂+1 |
| final | sample | pred_xstart | the last guided sample rather than the last unguided x̂0 |
| blend | always | ddpm_only | DDIM keeps the background too ("never": no blending, no final composite; ablations) |
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from facekit.experts.bisenet import KEPT_CLASSES, class_mask
from facekit.config import read_yaml_mapping, settings
from facekit.errors import UserError

from . import guidance
from .diffusion import GaussianDiffusion, diffusion_noise, extract
from .experts import Experts

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


CHOICES = {
    "sampler": ("ddpm", "ddim"),
    "embedder_resize": ("antialias", "nearest"),
    "parser_normalization": ("single", "double"),
    "parser_resize": ("antialias", "official"),
    "sem_reduction": ("mean", "sum"),
    "gaze_crop": ("subpixel", "integer"),
    "blend_noise": ("t-1", "t"),
    "final": ("sample", "pred_xstart"),
    "blend": ("always", "ddpm_only", "never"),
}


@dataclass
class SwapConfig:
    """Sampling knobs; the presets (teacher/presets/swap_*.yaml) are the paper's and the official code's.
    The behaviour switches default to ours; the module docstring lists the original's value of each."""

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
    cfg_scale: float = 1.0  # classifier-free guidance on the identity (ours; 1 = off, as DiffFace); needs a teacher
    # trained with identity_dropout and costs one more UNet forward per step
    low_frequency_noise: float = 0.0  # the teacher's kind of noise (diffusion_noise): `for_teacher` sets it from the
    # snapshot's metadata, so a teacher is always sampled with the noise it was trained on
    mask_ramp: int = 45  # T̂
    schedule: str = "linear"
    diffusion_steps: int = 1000
    clip_denoised: bool = True
    embedder_resize: str = "antialias"
    embedder_mask: bool = False
    parser_normalization: str = "single"
    parser_resize: str = "antialias"
    sem_reduction: str = "mean"
    gaze_crop: str = "subpixel"
    blend_noise: str = "t-1"
    mask_ramp_delay: int = 0
    final: str = "sample"
    blend: str = "always"

    def diffusion(self, learn_sigma: bool = True) -> GaussianDiffusion:
        return GaussianDiffusion.create(self.schedule, self.diffusion_steps, self.respacing, learn_sigma)

    def to_dict(self) -> dict:
        """The settings as data; cfg_scale and low_frequency_noise only when on, so pair data sets started before
        they existed resume."""
        data = asdict(self)
        data["gaze_window"] = list(self.gaze_window)
        if self.cfg_scale == 1:
            del data["cfg_scale"]
        if not self.low_frequency_noise:
            del data["low_frequency_noise"]
        return data


def load_swap_config(preset: str = "official", overrides: dict | None = None) -> SwapConfig:
    """A preset name (paper, official, ...) or a YAML file, then non-None overrides."""
    path = Path(preset)
    if not path.suffix:
        path = PRESETS_DIR / f"swap_{preset}.yaml"
    if not path.is_file():
        names = sorted(p.stem[len("swap_"):] for p in PRESETS_DIR.glob("swap_*.yaml"))
        raise UserError(f"unknown sampling preset {preset!r}: use one of {names} or a YAML file")
    data = read_yaml_mapping(path, "sampling settings")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if "low_frequency_noise" in data:
        raise UserError(f"{path}: low_frequency_noise is the teacher's, read from its snapshot; remove it")
    config = settings(SwapConfig, data, str(path), "sampling settings")
    if not 0 <= config.skip < config.respacing:
        raise UserError(f"skip must be in [0, respacing): got skip={config.skip}, respacing={config.respacing}")
    for name, choices in CHOICES.items():
        if getattr(config, name) not in choices:
            raise UserError(f"{name} must be one of {', '.join(choices)}, got {getattr(config, name)!r}")
    if config.cfg_scale < 0:
        raise UserError(f"cfg_scale must be ≥ 0 (1 = off), got {config.cfg_scale}")
    return config


def for_teacher(config: SwapConfig, metadata: dict, name: str) -> SwapConfig:
    """`config` for the teacher whose snapshot metadata this is: with the noise it was trained on. Refuses
    classifier-free guidance with a teacher that never saw the zero identity: its 'unconditional' eps would be
    an arbitrary extrapolation, not a model of faces."""
    if config.cfg_scale != 1 and not metadata.get("identity_dropout"):
        raise UserError(f"cfg_scale {config.cfg_scale:g} needs a teacher trained with identity_dropout; {name} was "
                        "not (use cfg_scale 1, or fine-tune it: configs/teacher_cfg_synthetic.yaml)")
    return replace(config, low_frequency_noise=float(metadata.get("low_frequency_noise", 0.0)))


@dataclass
class SwapResult:
    swap: torch.Tensor  # [B,3,H,W] in [-1,1], hard composite
    mask: torch.Tensor  # [B,1,H,W] {0,1}: where the swap may differ from the target
    valid: torch.Tensor  # [B] bool: False where sampling produced NaN/inf (drop that pair)


@dataclass
class Guide:
    """What guidance needs of a batch of pairs, computed once before the first step."""

    source_embedding: torch.Tensor  # UNet condition and identity reference
    target: torch.Tensor
    mask: torch.Tensor  # [B,1,H,W] kept-classes mask of the target
    target_logits: torch.Tensor | None
    landmarks: torch.Tensor | None
    target_gaze: torch.Tensor | None  # [B,2 eyes,2]


def prepare_guide(experts: Experts, source: torch.Tensor, target: torch.Tensor, config: SwapConfig,
                  landmarks: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> Guide:
    with torch.no_grad():
        embedding = guidance.source_embedding(experts, source, config)
        logits = guidance.parser_logits(experts, target, config) if (config.sem_weight or mask is None) else None
        if mask is None:
            mask = class_mask(logits, KEPT_CLASSES)
        gaze = None
        if config.gaze_weight:
            if landmarks is None:
                raise UserError("gaze guidance needs the target's landmarks; set the gaze weight to 0 to run without")
            gaze = guidance.eye_gazes(experts, target, landmarks, config.gaze_crop)
    return Guide(embedding, target, mask.to(target), logits, landmarks, gaze)


def guided_step(model: torch.nn.Module, diffusion: GaussianDiffusion, experts: Experts, config: SwapConfig,
                guide: Guide, x: torch.Tensor, i: int, noise: torch.Tensor, background_noise: torch.Tensor,
                generator: torch.Generator | None = None,
                autocast: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step i → i−1 of the respaced process (T = respacing − skip steps, i from T−1 down to 0):
    (x_{i−1} after blending, the step's x̂0 estimate for the `final: pred_xstart` composite)."""
    steps = diffusion.num_timesteps - config.skip
    b = x.shape[0]
    t = torch.full((b,), i, device=x.device, dtype=torch.long)
    guided = any((config.id_weight, config.sem_weight, config.gaze_weight, config.target_mse_weight))
    x_t = x.detach().requires_grad_(guided)
    with torch.set_grad_enabled(guided):
        with torch.autocast(x.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            output = diffusion.run_model(model, x_t, t, guide.source_embedding, config.cfg_scale)
        pred = diffusion.predict(output, x_t, t, clip=config.clip_denoised)
        grad = torch.zeros_like(x_t)
        if guided:
            energy = _energy(diffusion, experts, config, guide, x_t, t, pred.pred_xstart, generator)
            grad = torch.autograd.grad(energy.sum(), x_t)[0]
    if config.sampler == "ddpm":
        mean = pred.mean.detach() - pred.variance.detach() * grad
        x_prev = diffusion.ddpm_step(x, t, mean, pred.log_variance.detach(), noise)
        estimate = pred.pred_xstart.detach()
    else:
        eps = pred.eps.detach() + extract(diffusion.sqrt_one_minus_alphas_cumprod, t, x) * grad
        x_prev = diffusion.ddim_step(x, t, eps, config.eta, noise, clip=config.clip_denoised)
        estimate = diffusion.pred_xstart_from_eps(x, t, eps)
    if config.blend == "always" or (config.blend == "ddpm_only" and config.sampler == "ddpm"):
        level = i if config.blend_noise == "t" else i - 1
        background = (diffusion.q_sample(guide.target, torch.full_like(t, level), background_noise)
                      if level >= 0 else guide.target)
        m_t = min(1.0, (steps - i - config.mask_ramp_delay) / config.mask_ramp) * guide.mask
        x_prev = x_prev * m_t + background * (1 - m_t)
    return x_prev, estimate


def guided_swap(model: torch.nn.Module, experts: Experts, source: torch.Tensor, target: torch.Tensor,
                config: SwapConfig, landmarks: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None, progress: bool = False,
                autocast: torch.dtype | None = None) -> SwapResult:
    """Swap the identity of `source` onto `target` (both [B,3,H,W] in [-1,1]) for a batch of pairs.

    `mask` (the kept-classes mask of the target) is computed with the parser when not given; `landmarks`
    (the target's, 5 or 68 points) are needed only for gaze guidance. `autocast` (e.g. bf16 on a GPU)
    applies to the UNet only; guidance and the update stay in float32.
    """
    diffusion = config.diffusion(learn_sigma=getattr(getattr(model, "config", None), "learn_sigma", True))

    def noise_like(like: torch.Tensor) -> torch.Tensor:
        return diffusion_noise(like, config.low_frequency_noise, generator)

    guide = prepare_guide(experts, source, target, config, landmarks, mask)
    b = target.shape[0]
    steps = diffusion.num_timesteps - config.skip
    start = torch.full((b,), steps - 1, device=target.device, dtype=torch.long)
    x = diffusion.q_sample(target, start, noise_like(target))
    estimate = x
    valid = torch.ones(b, dtype=torch.bool, device=target.device)
    iterator = range(steps - 1, -1, -1)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="sampling", unit="step", leave=False)
    for i in iterator:
        noise = noise_like(x)
        x, estimate = guided_step(model, diffusion, experts, config, guide, x, i, noise, noise_like(x), generator, autocast)
        finite = torch.isfinite(x).flatten(1).all(dim=1) & torch.isfinite(estimate).flatten(1).all(dim=1)
        valid &= finite
        x = torch.where(finite[:, None, None, None], x, target)  # a diverged pair must not poison the batch
    final = x if config.final == "sample" else torch.where(valid[:, None, None, None], estimate, target)
    swap = final.clamp(-1, 1)
    if config.blend != "never":
        swap = target * (1 - guide.mask) + swap * guide.mask
    return SwapResult(swap=swap.detach(), mask=guide.mask, valid=valid)


def _energy(diffusion: GaussianDiffusion, experts: Experts, config: SwapConfig, guide: Guide, x_t: torch.Tensor,
            t: torch.Tensor, pred_xstart: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Weighted guidance energy per sample on x_in = √(1−ᾱ)·x̂0 + (1−√(1−ᾱ))·x_t."""
    fac = extract(diffusion.sqrt_one_minus_alphas_cumprod, t, x_t)
    x_in = pred_xstart * fac + x_t * (1 - fac)
    energy = torch.zeros(x_t.shape[0], device=x_t.device)
    if config.id_weight:
        energy = energy + config.id_weight * guidance.identity_loss(experts, x_in, guide.source_embedding, config,
                                                                    guide.mask, generator)
    if config.sem_weight:
        energy = energy + config.sem_weight * guidance.semantic_loss(experts, x_in, guide.target_logits, config)
    lo, hi = config.gaze_window
    if config.gaze_weight and lo < int(t[0]) < hi:
        energy = energy + config.gaze_weight * guidance.gaze_loss(experts, x_in, guide.landmarks, guide.target_gaze,
                                                                  config)
    if config.target_mse_weight:
        energy = energy + config.target_mse_weight * guidance.target_mse(x_in, guide.target)
    return energy


def identity_similarity(experts: Experts, source: torch.Tensor, swap: torch.Tensor) -> torch.Tensor:
    """cos(D_I(source), D_I(swap)) per pair: what the pairs record and the student's reweighting uses."""
    with torch.no_grad():
        return (experts.identity(source) * experts.identity(swap)).sum(dim=1)
