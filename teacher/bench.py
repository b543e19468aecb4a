"""What guided sampling costs: one guided step against one plain UNet forward+backward, and swaps/minute."""
from __future__ import annotations

import time

import torch

from .experts import Experts
from .sampling import SwapConfig, guided_swap


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, kernel selection)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench_sampling(model: torch.nn.Module, experts: Experts, config: SwapConfig, batch: int = 8,
                   repeats: int = 3, device: str = "cpu") -> dict[str, float]:
    """Seconds per UNet forward+backward, per guided sampling step, per swap; swaps per minute."""
    size = model.config.image_size
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    source = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    identity = torch.nn.functional.normalize(torch.randn(batch, 512, device=device), dim=1)
    t = torch.full((batch,), 500, device=device)
    mask = torch.ones(batch, 1, size, size, device=device)
    landmarks = torch.tensor([[size * 0.34, size * 0.46], [size * 0.66, size * 0.46], [size * 0.5, size * 0.64],
                              [size * 0.37, size * 0.82], [size * 0.63, size * 0.82]], device=device).expand(batch, -1, -1)

    def forward_backward():
        x_in = x.detach().requires_grad_(True)
        torch.autograd.grad(model(x_in, t, identity).square().sum(), x_in)

    fwd_bwd = _timed(forward_backward, repeats)
    steps = config.respacing - config.skip
    per_swap_batch = _timed(lambda: guided_swap(model, experts, source, x, config, landmarks=landmarks, mask=mask,
                                                generator=torch.Generator().manual_seed(0)), max(1, repeats // 2))
    per_step = per_swap_batch / steps
    return {"batch": batch, "image_size": size, "steps": steps, "unet_forward_backward_s": fwd_bwd,
            "guided_step_s": per_step, "step_over_forward_backward": per_step / fwd_bwd,
            "seconds_per_batch": per_swap_batch, "swaps_per_minute": 60 * batch / per_swap_batch}
