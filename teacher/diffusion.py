"""Gaussian diffusion: schedules, respacing, the hybrid training loss, DDPM and DDIM steps.

One class serves training (1000 steps) and sampling (respaced, e.g. 100 steps of which the first 25 are
skipped). It follows guided-diffusion's GaussianDiffusion/SpacedDiffusion split, simplified to what DiffFace
uses: eps prediction, LEARNED_RANGE variance, MSE + VLB ("hybrid") loss. A respaced diffusion keeps a
`timestep_map` so the model always sees timesteps on the original scale, as it was trained.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

LOW_FREQUENCY_GRID = 8  # the smooth part of `diffusion_noise` varies on this grid (8 px cells at 64²)


def beta_schedule(name: str, num_steps: int) -> np.ndarray:
    """'linear' (DDPM's 1e-4..0.02, scaled to num_steps) or 'cosine' (improved DDPM)."""
    if name == "linear":
        scale = 1000 / num_steps
        return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)
    if name == "cosine":
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999)
                         for i in range(num_steps)], dtype=np.float64)
    raise ValueError(f"unknown beta schedule {name!r} (use 'linear' or 'cosine')")


def space_timesteps(num_steps: int, spacing: str | int) -> list[int]:
    """Which original steps a respaced process keeps: "100" (even strides, guided-diffusion's rounding),
    "ddim50" (DDIM's integer stride, starting at 0), or "10,15,20" (counts per equal section)."""
    spacing = str(spacing)
    if spacing.startswith("ddim"):
        desired = int(spacing[len("ddim"):])
        for stride in range(1, num_steps):
            if len(range(0, num_steps, stride)) == desired:
                return list(range(0, num_steps, stride))
        raise ValueError(f"cannot make {desired} evenly spaced DDIM steps out of {num_steps}")
    counts = [int(c) for c in spacing.split(",")]
    size_per, extra = divmod(num_steps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count > size or count < 1:
            raise ValueError(f"cannot take {count} steps out of a section of {size}")
        stride = (size - 1) / (count - 1) if count > 1 else 1
        kept += [start + round(stride * j) for j in range(count)]
        start += size
    return kept


def diffusion_noise(like: torch.Tensor, low_frequency: float = 0.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Unit-variance Gaussian noise shaped like `like` ([..., H, W]), drawn from `generator` (on the CPU, so a
    seed gives the same noise on any device) or the device's global RNG; `low_frequency` of its variance moves
    to a smooth field (a random 8×8 grid, bilinearly upsampled and normalised per pixel). Why (ours, 0 by
    default as DiffFace): white noise hardly hides an image's regional colour, so a teacher learns the tone of a
    face from x_t and ignores its identity; smooth noise hides it at high t, and the model must take the tone
    from its condition. Training and sampling must draw the same kind (the teacher's metadata records it)."""
    *lead, height, width = like.shape

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        if generator is None:
            return torch.randn(shape, device=like.device, dtype=like.dtype)
        return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)

    white = draw(tuple(like.shape))
    if not low_frequency:
        return white
    coarse = draw((*lead, LOW_FREQUENCY_GRID, LOW_FREQUENCY_GRID))
    smooth = F.interpolate(coarse.reshape(-1, 1, LOW_FREQUENCY_GRID, LOW_FREQUENCY_GRID), size=(height, width),
                           mode="bilinear", align_corners=False).reshape(like.shape)
    gain = _bilinear_gain(height)[:, None] * _bilinear_gain(width)[None, :]
    return math.sqrt(1 - low_frequency) * white + math.sqrt(low_frequency) * smooth / gain.to(smooth)


def _bilinear_gain(size: int) -> torch.Tensor:
    """Per output position, the root sum of squared weights of 1-D linear upsampling from the grid: the
    standard deviation that upsampled unit white noise has there."""
    basis = torch.eye(LOW_FREQUENCY_GRID)[:, None]  # one grid point at a time
    weights = F.interpolate(basis, size=size, mode="linear", align_corners=False)[:, 0]  # [grid, size]
    return weights.pow(2).sum(0).sqrt()


def extract(values: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped to broadcast over an image batch."""
    out = torch.from_numpy(values).to(device=t.device)[t].to(like.dtype if like.is_floating_point() else torch.float32)
    return out.view(-1, *([1] * (like.dim() - 1)))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log p(x) for x in [-1,1] quantised to 8 bits (the decoder term of the VLB at t=0)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


@dataclass
class Prediction:
    """What one model forward gives at step t; every sampler and the loss derive from it."""

    eps: torch.Tensor
    pred_xstart: torch.Tensor  # unclipped x̂0 (guidance uses this)
    mean: torch.Tensor  # posterior mean from the clipped x̂0
    variance: torch.Tensor
    log_variance: torch.Tensor


class GaussianDiffusion:
    """A (possibly respaced) diffusion process over `len(betas)` steps."""

    def __init__(self, betas: np.ndarray, timestep_map: list[int] | None = None, learn_sigma: bool = True):
        self.betas = np.asarray(betas, dtype=np.float64)
        self.num_timesteps = len(self.betas)
        self.timestep_map = np.asarray(timestep_map if timestep_map is not None else range(self.num_timesteps))
        self.learn_sigma = learn_sigma
        alphas = 1.0 - self.betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t=0: use the t=1 value for its log.
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    @classmethod
    def create(cls, schedule: str = "linear", steps: int = 1000, respacing: str | int | None = None,
               learn_sigma: bool = True) -> "GaussianDiffusion":
        """The base process, or the respaced one that keeps only `space_timesteps(steps, respacing)`."""
        betas = beta_schedule(schedule, steps)
        if respacing is None or str(respacing) in ("", str(steps)):
            return cls(betas, learn_sigma=learn_sigma)
        kept = space_timesteps(steps, respacing)
        alphas_cumprod = np.cumprod(1.0 - betas)
        new_betas, last = [], 1.0
        for i in kept:
            new_betas.append(1 - alphas_cumprod[i] / last)
            last = alphas_cumprod[i]
        return cls(np.array(new_betas), timestep_map=kept, learn_sigma=learn_sigma)

    # forward process -------------------------------------------------------------------------------
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        noise = torch.randn_like(x_start) if noise is None else noise
        return (extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
                + extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise)

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = (extract(self.posterior_mean_coef1, t, x_t) * x_start
                + extract(self.posterior_mean_coef2, t, x_t) * x_t)
        return mean, extract(self.posterior_variance, t, x_t), extract(self.posterior_log_variance_clipped, t, x_t)

    def pred_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def eps_from_pred_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        return ((extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - pred_xstart)
                / extract(self.sqrt_recipm1_alphas_cumprod, t, x_t))

    # model ------------------------------------------------------------------------------------------
    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Indices of this (respaced) process → timesteps on the scale the model was trained on."""
        return torch.from_numpy(self.timestep_map).to(t.device)[t]

    def predict(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip: bool = True) -> Prediction:
        """Interpret a raw model output (eps | variance interpolation v) at step t."""
        model_output = model_output.float()
        if self.learn_sigma:
            eps, v = model_output.chunk(2, dim=1)
            min_log = extract(self.posterior_log_variance_clipped, t, x_t)
            max_log = extract(np.log(self.betas), t, x_t)
            frac = (v + 1) / 2  # LEARNED_RANGE: v in [-1,1] interpolates log β̃_t .. log β_t
            log_variance = frac * max_log + (1 - frac) * min_log
        else:
            eps = model_output
            log_variance = extract(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        pred_xstart = self.pred_xstart_from_eps(x_t, t, eps)
        clipped = pred_xstart.clamp(-1, 1) if clip else pred_xstart
        mean, _, _ = self.q_posterior(clipped, x_t, t)
        return Prediction(eps=eps, pred_xstart=pred_xstart, mean=mean,
                          variance=torch.exp(log_variance), log_variance=log_variance)

    def run_model(self, model: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, identity: torch.Tensor,
                  cfg_scale: float = 1.0) -> torch.Tensor:
        """The model's output at step t. With cfg_scale ≠ 1, classifier-free guidance (Ho & Salimans 2022):
        eps = eps(∅) + s·(eps(identity) − eps(∅)), the unconditional eps from the zero identity (what
        `identity_dropout` trains), both halves in one batched forward; the variance channels stay conditional."""
        timesteps = self.model_timesteps(t)
        if cfg_scale == 1:
            return model(x_t, timesteps, identity)
        both = model(torch.cat([x_t, x_t]), torch.cat([timesteps, timesteps]),
                     torch.cat([identity, torch.zeros_like(identity)]))
        conditional, unconditional = both.chunk(2)
        k = x_t.shape[1]
        eps = unconditional[:, :k] + cfg_scale * (conditional[:, :k] - unconditional[:, :k])
        return torch.cat([eps, conditional[:, k:]], dim=1)

    # samplers ---------------------------------------------------------------------------------------
    def ddpm_step(self, x_t: torch.Tensor, t: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
        noise = torch.randn_like(x_t) if noise is None else noise
        nonzero = (t != 0).float().view(-1, *([1] * (x_t.dim() - 1)))
        return mean + nonzero * torch.exp(0.5 * log_variance) * noise

    def ddim_step(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, eta: float = 0.0,
                  noise: torch.Tensor | None = None, clip: bool = True) -> torch.Tensor:
        """x_{t-1} from eps (already guidance-corrected, if guided), DDIM with stochasticity eta."""
        pred_xstart = self.pred_xstart_from_eps(x_t, t, eps)
        if clip:
            pred_xstart = pred_xstart.clamp(-1, 1)
            eps = self.eps_from_pred_xstart(x_t, t, pred_xstart)
        alpha_bar = extract(self.alphas_cumprod, t, x_t)
        alpha_bar_prev = extract(self.alphas_cumprod_prev, t, x_t)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        mean = pred_xstart * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps
        noise = torch.randn_like(x_t) if noise is None else noise
        nonzero = (t != 0).float().view(-1, *([1] * (x_t.dim() - 1)))
        return mean + nonzero * sigma * noise

    # training ---------------------------------------------------------------------------------------
    def training_losses(self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor,
                        t: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample 'mse' (eps) and, with learned sigma, 'vb' (the VLB term that trains only the
        variance: the mean is detached, as guided-diffusion's hybrid loss). Also returns 'pred_xstart'."""
        model_output = model_output.float()
        eps = model_output[:, : x_start.shape[1]]
        terms = {"mse": ((noise - eps) ** 2).mean(dim=(1, 2, 3))}
        if self.learn_sigma:
            frozen = torch.cat([eps.detach(), model_output[:, x_start.shape[1]:]], dim=1)
            terms["vb"] = self.vb_terms(frozen, x_start, x_t, t)
        terms["pred_xstart"] = self.pred_xstart_from_eps(x_t, t, eps)
        return terms

    def vb_terms(self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) in bits per dim; the decoder NLL at t=0."""
        true_mean, _, true_log_var = self.q_posterior(x_start, x_t, t)
        pred = self.predict(model_output, x_t, t, clip=False)
        kl = normal_kl(true_mean, true_log_var, pred.mean, pred.log_variance).mean(dim=(1, 2, 3)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, pred.mean, 0.5 * pred.log_variance)
        nll = nll.mean(dim=(1, 2, 3)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)
