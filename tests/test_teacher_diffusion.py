"""Gaussian diffusion: schedules, respacing and skip-steps as DiffFace uses them, learned-range variance."""
import numpy as np
import pytest
import torch

from teacher.diffusion import GaussianDiffusion, beta_schedule, diffusion_noise, space_timesteps


def test_official_respacing_with_skip_starts_at_747():
    kept = space_timesteps(1000, "100")
    assert len(kept) == 100 and kept[0] == 0 and kept[-1] == 999
    diffusion = GaussianDiffusion.create("linear", 1000, 100)
    start = diffusion.num_timesteps - 25 - 1  # 100 respaced steps, the first 25 skipped → 75 steps
    assert diffusion.model_timesteps(torch.tensor([start])).item() == 747
    base = GaussianDiffusion.create("linear", 1000)
    assert np.allclose(diffusion.alphas_cumprod, base.alphas_cumprod[kept])
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))


def test_schedules():
    linear = beta_schedule("linear", 1000)
    assert linear[0] == pytest.approx(1e-4) and linear[-1] == pytest.approx(0.02)
    cosine = beta_schedule("cosine", 1000)
    assert (cosine > 0).all() and (cosine <= 0.999).all() and np.all(np.diff(cosine) >= -1e-12)
    with pytest.raises(ValueError):
        beta_schedule("quadratic", 10)


def test_learned_range_variance_interpolates_between_posterior_and_beta():
    diffusion = GaussianDiffusion.create("linear", 1000, 50)
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([5, 30])
    eps = torch.randn_like(x)
    hi = diffusion.predict(torch.cat([eps, torch.ones_like(x)], 1), x, t)
    lo = diffusion.predict(torch.cat([eps, -torch.ones_like(x)], 1), x, t)
    mid = diffusion.predict(torch.cat([eps, torch.zeros_like(x)], 1), x, t)
    for i, step in enumerate(t.tolist()):
        assert torch.allclose(hi.log_variance[i], torch.tensor(np.log(diffusion.betas[step]), dtype=torch.float32))
        assert torch.allclose(lo.log_variance[i],
                              torch.tensor(diffusion.posterior_log_variance_clipped[step], dtype=torch.float32))
    assert torch.allclose(mid.log_variance, (hi.log_variance + lo.log_variance) / 2)
    assert torch.allclose(hi.eps, eps)


def test_exact_eps_recovers_x0_and_ddim_follows_the_forward_process():
    diffusion = GaussianDiffusion.create("linear", 1000, 20)
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([10, 10])
    x_t = diffusion.q_sample(x0, t, noise)
    assert torch.allclose(diffusion.pred_xstart_from_eps(x_t, t, noise), x0, atol=1e-5)
    x_prev = diffusion.ddim_step(x_t, t, noise, eta=0.0)
    assert torch.allclose(x_prev, diffusion.q_sample(x0, t - 1, noise), atol=1e-5)


def test_hybrid_loss_terms():
    diffusion = GaussianDiffusion.create("linear", 1000)
    x0 = torch.rand(3, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 999])
    x_t = diffusion.q_sample(x0, t, noise)
    perfect = torch.cat([noise, torch.zeros_like(x0)], 1).requires_grad_(True)
    terms = diffusion.training_losses(perfect, x0, x_t, t, noise)
    assert torch.allclose(terms["mse"], torch.zeros(3))
    assert terms["vb"].shape == (3,) and torch.isfinite(terms["vb"]).all() and (terms["vb"][1:] >= 0).all()
    # the VLB trains only the variance channels (the mean is frozen, guided-diffusion's hybrid loss)
    terms["vb"].sum().backward()
    assert perfect.grad[:, :3].abs().max() == 0 and perfect.grad[:, 3:].abs().max() > 0


def test_low_frequency_noise_keeps_unit_variance_and_hides_a_regions_colour():
    like = torch.zeros(256, 3, 64, 64)
    white = diffusion_noise(like, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(white, torch.randn(like.shape, generator=torch.Generator().manual_seed(0)))  # 0: as DiffFace
    smooth = diffusion_noise(like, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(smooth, diffusion_noise(like, 0.2, torch.Generator().manual_seed(0)))  # a seed repeats it
    per_pixel = smooth.std(dim=(0, 1))
    assert abs(float(smooth.std()) - 1) < 0.01 and 0.85 < float(per_pixel.min()) and float(per_pixel.max()) < 1.15
    # the mean over a face-sized region: white noise averages away, the smooth field does not
    region = (slice(None), slice(None), slice(16, 48), slice(16, 48))
    assert float(smooth[region].mean(dim=(2, 3)).std()) > 4 * float(white[region].mean(dim=(2, 3)).std())
