"""What guided sampling costs: swaps per minute for each batch size and way of running the UNet (bf16,
channels_last, torch.compile), a guided step against one UNet forward+backward, and against the official loop.

Our step runs the UNet once: its output, computed with grad, gives both the mean and the guidance gradient.
The official loop (hxngiee/DiffFace on guided-diffusion's p_sample with a cond_fn) runs it twice a step,
p_mean_variance without grad and then cond_fn's forward+backward, and swaps one pair at a time. Both loops
are timed in the same rounds on the same inputs, so their ratio holds on a shared or throttling machine.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch

from facekit.errors import UserError
from facekit.timing import time_rounds

from .experts import Experts
from .sampling import SwapConfig, guided_step, prepare_guide

VARIANT_PARTS = ("fp32", "bf16", "channels_last", "compile")
TIMED_STEPS = 4  # steps timed per round, spread over the schedule (gaze guidance runs in only part of it)


@dataclass(frozen=True)
class Variant:
    """How the UNet runs; the guidance and the update stay in float32 whatever the variant."""

    bf16: bool = False
    channels_last: bool = False
    compile: bool = False

    @property
    def name(self) -> str:
        parts = ["bf16" if self.bf16 else "fp32"] + ["channels_last"] * self.channels_last + ["compile"] * self.compile
        return "+".join(parts)


def parse_variants(text: str) -> list[Variant]:
    """'fp32,bf16,bf16+channels_last,bf16+channels_last+compile' → Variants (one line naming a bad part)."""
    variants = []
    for item in (part.strip() for part in text.split(",")):
        parts = set(item.split("+"))
        unknown = parts - set(VARIANT_PARTS)
        if not item or unknown or {"fp32", "bf16"} <= parts:
            raise UserError(f"--variants: {item!r} is not a variant; join {', '.join(VARIANT_PARTS)} with '+' "
                            "(fp32 or bf16, not both), e.g. bf16+channels_last+compile")
        variants.append(Variant("bf16" in parts, "channels_last" in parts, "compile" in parts))
    return variants


def prepare_unet(model: torch.nn.Module, variant: Variant) -> torch.nn.Module:
    """A copy of `model` in the variant's memory format, compiled if asked (the caller's model is untouched)."""
    unet = copy.deepcopy(model)
    if variant.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    return torch.compile(unet) if variant.compile else unet


def bench_sampling(model: torch.nn.Module, experts: Experts, config: SwapConfig, batch: int = 8, repeats: int = 3,
                   device: str = "cpu", variant: Variant = Variant()) -> dict[str, float]:
    """Seconds per UNet forward+backward, per guided step of ours and of the official two-pass loop, and
    swaps per minute of each, at one batch size and variant (medians over `repeats` interleaved rounds)."""
    unet = prepare_unet(model, variant)
    size = model.config.image_size
    generator = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.rand(*shape, generator=generator).to(device)  # noqa: E731
    target, source = rand(batch, 3, size, size) * 2 - 1, rand(batch, 3, size, size) * 2 - 1
    memory = torch.channels_last if variant.channels_last else torch.contiguous_format
    x = target.contiguous(memory_format=memory)
    mask = torch.ones(batch, 1, size, size, device=device)
    landmarks = torch.tensor([[0.34, 0.46], [0.66, 0.46], [0.5, 0.64], [0.37, 0.82], [0.63, 0.82]], device=device)
    guide = prepare_guide(experts, source, target, config, (landmarks * size).expand(batch, -1, -1), mask)
    diffusion = config.diffusion(learn_sigma=getattr(model.config, "learn_sigma", True))
    steps = diffusion.num_timesteps - config.skip
    autocast = torch.bfloat16 if variant.bf16 else None
    noise = torch.randn(x.shape, generator=generator).to(device)
    timed = [int(i) for i in np.linspace(steps - 1, 0, min(TIMED_STEPS, steps)).round()]

    def one_pass() -> None:
        for i in timed:
            guided_step(unet, diffusion, experts, config, guide, x, i, noise, noise, generator, autocast)

    def two_pass() -> None:
        for i in timed:
            t = torch.full((batch,), i, device=device, dtype=torch.long)
            with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=variant.bf16):
                diffusion.run_model(unet, x, t, guide.source_embedding, config.cfg_scale)  # p_mean_variance
            guided_step(unet, diffusion, experts, config, guide, x, i, noise, noise, generator, autocast)

    def forward_backward() -> None:
        x_in = x.detach().requires_grad_(True)
        t = torch.full((batch,), 500, device=device, dtype=torch.long)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=variant.bf16):
            out = unet(x_in, t, guide.source_embedding)
        torch.autograd.grad(out.float().square().sum(), x_in)

    calls = {"forward_backward": forward_backward, "one_pass": one_pass, "two_pass": two_pass}
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    warmup_s, samples = time_rounds(calls, repeats, warmup=1, sync=sync)
    times = {name: float(np.median(values)) for name, values in samples.items()}
    step, two_pass_step = times["one_pass"] / len(timed), times["two_pass"] / len(timed)
    return {"batch": batch, "variant": variant.name, "image_size": size, "steps": steps,
            "unet_forward_backward_s": times["forward_backward"], "guided_step_s": step,
            "two_pass_step_s": two_pass_step, "step_over_forward_backward": step / times["forward_backward"],
            "two_pass_over_one_pass": two_pass_step / step, "swaps_per_minute": 60 * batch / (steps * step),
            "two_pass_swaps_per_minute": 60 * batch / (steps * two_pass_step), "warmup_s": warmup_s}


def bench_grid(model: torch.nn.Module, experts: Experts, config: SwapConfig, batches: list[int],
               variants: list[Variant], repeats: int = 3, device: str = "cpu") -> dict:
    """Every batch size × variant, and the official loop as the original runs it (one pair at a time, fp32,
    two passes a step) for the speed-up over it."""
    rows = [bench_sampling(model, experts, config, b, repeats, device, v) for b in batches for v in variants]
    measured = [row for row in rows if row["batch"] == 1 and row["variant"] == Variant().name]  # not twice
    official = dict(measured[0]) if measured else bench_sampling(model, experts, config, 1, repeats, device, Variant())
    reference = official["two_pass_swaps_per_minute"]
    for row in rows:
        row["over_official_loop"] = row["swaps_per_minute"] / reference
    return {"device": _device_name(device), "preset_steps": rows[0]["steps"], "config": asdict(config),
            "rows": rows, "official_loop": official, "official_loop_swaps_per_minute": reference}


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def markdown(report: dict, title: str) -> str:
    """The grid as a table: what a user reads to pick a batch size and variant for their device."""
    lines = [f"# {title}", "", f"Device: {report['device']}; {report['preset_steps']} sampling steps a swap.", "",
             "| batch | UNet | guided step ms | swaps/min | official two-pass step ms | two-pass / ours | × the official loop |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        lines.append(f"| {row['batch']} | {row['variant']} | {1e3 * row['guided_step_s']:.1f} | "
                     f"{row['swaps_per_minute']:.3g} | {1e3 * row['two_pass_step_s']:.1f} | "
                     f"{row['two_pass_over_one_pass']:.2f} | {row['over_official_loop']:.1f} |")
    official = report["official_loop"]
    lines += ["", f"The official loop (one pair at a time, fp32, the UNet twice a step): "
              f"{1e3 * official['two_pass_step_s']:.1f} ms a step, {official['two_pass_swaps_per_minute']:.3g} swaps/min "
              f"({60 / official['two_pass_swaps_per_minute']:.1f} s a swap). Our step at batch 1, fp32: "
              f"{1e3 * official['guided_step_s']:.1f} ms, {official['step_over_forward_backward']:.2f}× one UNet "
              "forward+backward. First-call seconds (allocation, compilation) are in bench.json as warmup_s."]
    return "\n".join(lines) + "\n"
