"""Training the identity-conditional teacher (DiffFace Algorithm 1).

loss = ‖ε − ε̂‖² + VLB (learned sigma, guided-diffusion's hybrid loss) + λ·(1 − cos(D_I(x0), D_I(x̂0))),
conditioned on D_I(x0), the identity of the clean image itself; with `identity_dropout` (ours, off by default) that
share of each batch is conditioned on the zero identity instead, so that the teacher also learns the unconditional
model classifier-free guidance needs (`SwapConfig.cfg_scale`); with `low_frequency_noise` (ours, 0 by default) ε
carries that share of its variance in a smooth field (`diffusion_noise`), and the snapshots tell sampling to draw the
same; with `neck_mismatch` (ours, synthetic world only, 0 by default) that share of the faces sits on another
person's neck, so the neck no longer tells the teacher the face's tone; with `recolour` (ours, synthetic world
only, 0 by default) that share of the samples at t ≥ recolour_from·T is noised from the same face in another
person's skin and iris colours while the loss still asks for the face itself (`_noised_start`). One script for one
CPU and for torchrun (DDP over WORLD_SIZE processes; gloo on CPU, nccl on GPUs).

Run layout (`out/`):
  checkpoints/step_NNNNNNN.{model,ema}.safetensors + .state.pt  optimizer, step, RNG states (weights_only-safe)
  checkpoints/latest.json                                       the newest complete checkpoint (written last)
  snapshots/step_NNNNNNN.safetensors                             EMA weights at the configured fractions
  tb/                                                            TensorBoard scalars and image grids
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from facekit.config import check_bounds, read_yaml_mapping, settings
from facekit.errors import UserError
from facekit.files import atomic_write_text
from facekit.resume import (DamagedState, InterruptFlag, changed_settings, load_state, restore_rng, rng_state,
                            save_state)
from facekit.training import EMA, native_bf16, setup_distributed

from .checkpoint import read_metadata, save_weights
from .data import FaceSource
from .diffusion import GaussianDiffusion, diffusion_noise
from .experts import Experts, load_experts, to_model
from .unet import UNetConfig, UNetModel, load_unet_config

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    out: str = "runs/teacher"
    unet: str = "demo_64"  # UNet preset name or YAML file
    data: str = "synthetic"  # 'synthetic' (rendered on the fly) or a folder data set
    experts: str | None = None  # small experts directory (synthetic world)
    arcface: str | None = None  # or the official Arcface.tar
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-4
    grad_clip: float = 1.0
    ema_rate: float = 0.999
    lambda_id: float = 0.01  # on (1 − cos), as the official train_util.py (the paper writes λ=0.5 on ‖v − v̂‖²; at
    # 1.0 the term, amplified by 1/√ᾱ_t through x̂0, swamped the noise loss: samples stayed noise)
    schedule: str = "linear"
    diffusion_steps: int = 1000
    precision: str = "auto"  # auto (bf16 where the GPU or CPU computes it, else fp32) | fp32 | bf16
    grad_checkpoint: bool = False
    snapshot_fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 1.0)
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    image_every: int = 100
    seed: int = 0
    data_workers: int | None = None  # processes rendering synthetic batches ahead; None: up to 8 on a GPU, 0 on CPU
    init: str | None = None  # teacher weights (.safetensors) a new run starts from instead of random ones
    focus_timesteps: tuple[int, int] | None = None  # [lo, hi): the noise levels a fine-tune spends focus_share on
    focus_share: float = 0.0  # 0: t uniform over all steps, as DiffFace
    identity_dropout: float = 0.0  # share of samples conditioned on the zero identity; 0: always conditioned, as DiffFace
    low_frequency_noise: float = 0.0  # share of the noise's variance in a smooth field (diffusion_noise); 0: white, as DiffFace
    neck_mismatch: float = 0.0  # synthetic world: share of faces on another person's neck (synthetic_faces); 0: none
    recolour: float = 0.0  # synthetic world: share of samples noised from the face in other colours (_noised_start)
    recolour_from: float = 0.3  # ... at t ≥ recolour_from·T: the sampler's mask ramp ends near 0.35·T
    extra_unet: dict = field(default_factory=dict)  # overrides of the preset's fields

    def to_dict(self) -> dict:
        data = asdict(self)
        data["snapshot_fractions"] = list(self.snapshot_fractions)
        data["focus_timesteps"] = list(self.focus_timesteps) if self.focus_timesteps else None
        return data


def load_train_config(path: str | None, overrides: dict | None = None) -> TrainConfig:
    data = read_yaml_mapping(path, "training settings") if path else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if "snapshot_fractions" in data:
        try:
            data["snapshot_fractions"] = tuple(float(f) for f in data["snapshot_fractions"])
        except (TypeError, ValueError):
            raise UserError(f"snapshot_fractions must be numbers in (0, 1], got {data['snapshot_fractions']!r}") from None
        if not all(0 < f <= 1 for f in data["snapshot_fractions"]):
            raise UserError(f"snapshot_fractions must lie in (0, 1], got {list(data['snapshot_fractions'])}")
    if data.get("focus_timesteps") is not None:
        data["focus_timesteps"] = tuple(data["focus_timesteps"])
    config = settings(TrainConfig, data, path or "the command line", "training settings")
    _check_values(config, path or "the command line")
    return config


POSITIVE = ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every", "image_every",
            "diffusion_steps")
# Settings that change what the run computes: a resumed run must keep them (the snapshots' fractions and
# the pairs built on them would otherwise lie).
FIXED_ON_RESUME = ("unet", "data", "steps", "batch_size", "lr", "grad_clip", "ema_rate", "lambda_id", "schedule",
                   "diffusion_steps", "precision", "snapshot_fractions", "seed", "extra_unet", "init",
                   "focus_timesteps", "focus_share", "identity_dropout", "low_frequency_noise", "neck_mismatch",
                   "recolour", "recolour_from")


def _check_values(config: TrainConfig, where: str) -> None:
    check_bounds(config, where, {name: 1 for name in POSITIVE}, above_zero=("lr",),
                 non_negative=("grad_clip", "ema_rate", "lambda_id"))
    if config.ema_rate >= 1:
        raise UserError(f"{where}: ema_rate must be below 1, got {config.ema_rate}")
    focus = config.focus_timesteps
    if focus is not None and not (len(focus) == 2 and all(isinstance(v, int) for v in focus)
                                  and 0 <= focus[0] < focus[1] <= config.diffusion_steps):
        raise UserError(f"{where}: focus_timesteps must be two whole numbers 0 ≤ lo < hi ≤ diffusion_steps "
                        f"({config.diffusion_steps}), got {list(focus)}")
    if not 0 <= config.focus_share <= 1 or (config.focus_share and focus is None):
        raise UserError(f"{where}: focus_share must lie in [0, 1] and needs focus_timesteps, got {config.focus_share}")
    if not 0 <= config.identity_dropout < 1:
        raise UserError(f"{where}: identity_dropout must lie in [0, 1), got {config.identity_dropout}")
    if not 0 <= config.low_frequency_noise < 1:
        raise UserError(f"{where}: low_frequency_noise must lie in [0, 1), got {config.low_frequency_noise}")
    if not 0 <= config.neck_mismatch <= 1:
        raise UserError(f"{where}: neck_mismatch must lie in [0, 1], got {config.neck_mismatch}")
    if not 0 <= config.recolour <= 1:
        raise UserError(f"{where}: recolour must lie in [0, 1], got {config.recolour}")
    if not 0 <= config.recolour_from < 1:
        raise UserError(f"{where}: recolour_from must lie in [0, 1), got {config.recolour_from}")
    workers = config.data_workers
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 0):
        raise UserError(f"{where}: data_workers must be a whole number ≥ 0 (or left out for auto), got {workers!r}")


def data_workers(config: TrainConfig, device: torch.device, world: int) -> int:
    """Rendering processes per rank: on CPU none (the cores train; a batch of 32 at 64² renders in 0.05 s
    against a 1-14 s step); on a GPU the host's spare cores, up to 8, so the GPU does not wait on the
    one-threaded renderer."""
    if config.data_workers is not None:
        return config.data_workers
    if device.type == "cpu":
        return 0
    return max(1, min(8, (os.cpu_count() or 1) // world - 1))


def sampling_metadata(config: TrainConfig) -> dict:
    """What sampling reads from any saved teacher, snapshot or checkpoint EMA: whether it learned the
    unconditional model (classifier-free guidance is refused without it) and the noise it was trained on."""
    return {"identity_dropout": config.identity_dropout, "low_frequency_noise": config.low_frequency_noise}


def snapshot_metadata(step: int, fraction: float, config: TrainConfig) -> dict:
    """What a snapshot records besides its weights: where in training it was taken, and what sampling needs."""
    return {"step": step, "fraction": fraction, "snapshot_id": f"step_{step:07d}", "total_steps": config.steps,
            **sampling_metadata(config)}


def snapshot_steps(total: int, fractions: tuple[float, ...]) -> dict[int, float]:
    """Training step → fraction of training completed, for each kept snapshot."""
    return {max(1, round(f * total)): f for f in fractions}


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 where the hardware computes it (see `native_bf16`), else fp32; bf16 asked for where it is
    emulated still runs, with a warning, since results must not depend on the machine silently."""
    if precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    native = native_bf16(device)
    if precision == "bf16" and not native:
        log.warning("teacher train: precision bf16 on a %s without native bf16 is emulated, about 14x slower than "
                    "fp32: use precision auto or fp32", device.type)
    if precision == "bf16" or (precision == "auto" and native):
        return torch.bfloat16
    return None


def train(config: TrainConfig, experts: Experts | None = None, stop_after: int | None = None,
          extend: bool = False) -> Path:
    """Train (or resume) to `config.steps`; `stop_after` ends this process early (tests, time slicing);
    `extend` lets a resumed run grow to more steps (see `_extension`)."""
    ddp = setup_distributed()
    world, rank, device = ddp.world, ddp.rank, ddp.device
    out = Path(config.out)
    experts = experts or load_experts(config.experts, arcface=config.arcface)
    experts.embedder.to(device)
    unet_config = load_unet_config(config.unet)
    unet_config = type(unet_config).from_dict({**unet_config.to_dict(), **config.extra_unet,
                                               "use_checkpoint": config.grad_checkpoint})
    torch.manual_seed(config.seed)
    model = UNetModel(unet_config).to(device)
    ema = EMA(model, config.ema_rate, warmup=True)
    ema.model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    diffusion = GaussianDiffusion.create(config.schedule, config.diffusion_steps, learn_sigma=unet_config.learn_sigma)
    faces = FaceSource(config.data, unet_config.image_size, neck_mismatch=config.neck_mismatch,
                       recolour=bool(config.recolour))
    data_rng = torch.Generator().manual_seed(config.seed * 1000 + rank)
    step = _resume(out, model, ema, optimizer, data_rng, rank, device, config, extend)
    if step == 0:
        if config.init:
            _start_from(config.init, model, ema, device)
        torch.manual_seed(config.seed * 1000 + rank)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    autocast = _autocast_dtype(config.precision, device)
    snapshots = snapshot_steps(config.steps, config.snapshot_fractions)
    writer = _writer(out) if rank == 0 else None
    last = config.steps if stop_after is None else min(config.steps, step + stop_after)

    from tqdm import tqdm

    bar = tqdm(total=config.steps, initial=step, desc="teacher train", unit="step", disable=rank != 0)
    model.train()
    interrupted = InterruptFlag()
    batches = faces.batches(range(step, last), config.batch_size, config.seed, world, rank, data_rng,
                            data_workers(config, device, world), pin_memory=device.type == "cuda")
    for images, recoloured in batches:
        x0 = to_model(images.to(device, non_blocking=True))
        if recoloured is not None:
            recoloured = to_model(recoloured.to(device, non_blocking=True))
        terms = _losses(wrapped, diffusion, experts, x0, config, autocast, recoloured)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        ema.update(model, step)
        step += 1
        bar.update(1)
        if rank == 0:
            if step % config.log_every == 0 or step == last:  # reading a loss waits for the GPU: only here
                scalars = {k: float(v.detach()) for k, v in terms.items() if v.dim() == 0}
                bar.set_postfix(loss=f"{scalars['loss']:.4f}")
                for name, value in {**scalars, "grad_norm": float(grad_norm)}.items():
                    writer.add_scalar(f"train/{name}", value, step)
            if step % config.image_every == 0 or step == config.steps:
                _log_images(writer, ema.model, experts, x0, terms["pred_xstart"], step, config.low_frequency_noise)
            if step in snapshots:
                save_weights(ema.model, out / "snapshots" / f"step_{step:07d}.safetensors",
                             snapshot_metadata(step, snapshots[step], config))
            if step % config.checkpoint_every == 0 or step == last or interrupted.raised:
                _save_checkpoint(out, model, ema, optimizer, data_rng, step, config)
        if interrupted.raised:
            break
    batches.close()
    bar.close()
    interrupted.restore()
    if interrupted.raised:
        raise KeyboardInterrupt
    if writer:
        writer.close()
    if world > 1:
        dist.barrier()
    ddp.close()
    return out


def _start_from(path: str, model: UNetModel, ema: EMA, device: torch.device) -> None:
    """A fine-tune's first weights (raw and EMA alike): a teacher of the same UNet."""
    from .checkpoint import load_teacher

    start, _ = load_teacher(path, device)
    if start.config.to_dict() | {"use_checkpoint": False} != model.config.to_dict() | {"use_checkpoint": False}:
        raise UserError(f"init {path} is a different UNet ({start.config.to_dict()}); fine-tune it with its own --unet")
    model.load_state_dict(start.state_dict())
    ema.model.load_state_dict(start.state_dict())


def sample_timesteps(n: int, num_timesteps: int, config: TrainConfig, device: torch.device) -> torch.Tensor:
    """Uniform t, as DiffFace; with focus_share, that share of the batch is drawn from focus_timesteps instead.
    Why: the teacher's condition decides a swap's colour and outline at high noise, the levels a short run
    learns least (the identity barely changes x̂0 there), so a fine-tune can spend its steps on them."""
    t = torch.randint(0, num_timesteps, (n,), device=device)
    if config.focus_share:
        lo, hi = config.focus_timesteps
        focused = torch.rand(n, device=device) < config.focus_share
        t = torch.where(focused, torch.randint(lo, hi, (n,), device=device), t)
    return t


def _noised_start(x0: torch.Tensor, recoloured: torch.Tensor | None, t: torch.Tensor, num_timesteps: int,
                  config: TrainConfig) -> torch.Tensor:
    """The image each sample's x_t is noised from: x0, or for a `recolour` share of the samples at t ≥
    recolour_from·T its recoloured twin. Why (ours): in a swap x_t holds the target's colours, and a teacher
    trained only on x_t noised from the truth learns to keep x_t's colours; noised from a twin in other colours,
    with x0 as the answer, the colours must come from the identity condition. The lower the levels it reaches,
    the larger the loss's ε target (it grows as √SNR·(recoloured − x0))."""
    if not config.recolour:  # drawn only when on: runs without it draw what they always drew
        return x0
    chosen = ((torch.rand(x0.shape[0], device=x0.device) < config.recolour)
              & (t >= config.recolour_from * num_timesteps))
    return torch.where(chosen[:, None, None, None], recoloured, x0)


def _losses(model: torch.nn.Module, diffusion: GaussianDiffusion, experts: Experts, x0: torch.Tensor,
            config: TrainConfig, autocast: torch.dtype | None,
            recoloured: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        identity = experts.identity(x0)
    t = sample_timesteps(x0.shape[0], diffusion.num_timesteps, config, x0.device)
    noise = diffusion_noise(x0, config.low_frequency_noise)
    x_t = diffusion.q_sample(_noised_start(x0, recoloured, t, diffusion.num_timesteps, config), t, noise)
    if config.recolour:  # the ε that takes this x_t to x0 itself
        noise = diffusion.eps_from_pred_xstart(x_t, t, x0)
    condition = identity
    if config.identity_dropout:  # drawn only when on: runs without it draw what they always drew
        condition = identity * (torch.rand(x0.shape[0], 1, device=x0.device) >= config.identity_dropout)
    with torch.autocast(x0.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        output = diffusion.run_model(model, x_t, t, condition)
    terms = diffusion.training_losses(output, x0, x_t, t, noise)
    loss = terms["mse"] + terms.get("vb", torch.zeros_like(terms["mse"]))
    if config.lambda_id:
        cos = (experts.identity(terms["pred_xstart"].clamp(-1, 1)) * identity).sum(dim=1)
        terms["id"] = 1 - cos
        loss = loss + config.lambda_id * terms["id"]
    terms["loss"] = loss
    return {k: (v.mean() if k != "pred_xstart" else v) for k, v in terms.items()}


def _writer(out: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tb"))


def _log_images(writer, ema: UNetModel, experts: Experts, x0: torch.Tensor, pred_xstart: torch.Tensor,
                step: int, low_frequency_noise: float) -> None:
    """Rows: clean faces; the model's one-step x̂0 (random t); short unguided DDIM samples from each face
    noised halfway, conditioned on its own identity and on its neighbour's (is the condition used?), and the
    mean change between those two rows as a scalar."""
    from torchvision.utils import make_grid

    from .sampling import SwapConfig, guided_swap

    n = min(8, x0.shape[0])
    faces = x0[:n]
    preview = SwapConfig(respacing=10, skip=4, sampler="ddim", id_weight=0, sem_weight=0, gaze_weight=0,
                         target_mse_weight=0, mask_ramp=1, low_frequency_noise=low_frequency_noise)
    ones = torch.ones_like(faces[:, :1])
    own = guided_swap(ema, experts, faces, faces, preview, mask=ones, generator=torch.Generator().manual_seed(0))
    other = guided_swap(ema, experts, faces.roll(1, 0), faces, preview, mask=ones,
                        generator=torch.Generator().manual_seed(0))
    rows = [faces, pred_xstart[:n].detach().float().clamp(-1, 1), own.swap, other.swap]
    # [0,1] pixels; near 0 while the model ignores its identity (README: the shipped teacher)
    writer.add_scalar("train/identity_change", float((own.swap - other.swap).abs().mean() / 2), step)
    writer.add_image("train/x0_predx0_own-id_other-id", (make_grid(torch.cat(rows), nrow=n) + 1) / 2, step)


EXTENDABLE = ("steps", "snapshot_fractions")


def _extension(out: Path, step: int, config: TrainConfig) -> None:
    """Let a run continue to a larger `steps`. Exact, not a fine-tune: nothing in a step depends on the total
    (constant learning rate, data seeded by the step), so the first steps of the longer run are the steps
    already taken. Only the snapshots' labels change: each kept snapshot must sit at a step the new
    fractions keep, and is relabelled with its fraction of the new total (the quality regressor learns those)."""
    if config.steps < step:
        raise UserError(f"{out} is at step {step}; --extend needs --steps ≥ {step}, got {config.steps}")
    kept = snapshot_steps(config.steps, config.snapshot_fractions)
    existing = sorted((out / "snapshots").glob("step_*.safetensors"))
    orphans = [p.name for p in existing if int(p.stem[5:]) not in kept]
    if orphans:
        wanted = ", ".join(f"{int(p.stem[5:]) / config.steps:g}" for p in existing)
        raise UserError(f"{out}: snapshots {orphans} are not at the new snapshot fractions of {config.steps} steps; "
                        f"keep them with --snapshot-fractions including {wanted}")
    from safetensors.torch import load_file

    for path in existing:
        snap_step = int(path.stem[5:])
        meta = read_metadata(path)
        if meta.get("total_steps") == config.steps:
            continue
        model = UNetModel(UNetConfig.from_dict(meta["unet_config"]))
        model.load_state_dict(load_file(str(path)))
        save_weights(model, path, snapshot_metadata(snap_step, kept[snap_step], config))


def _checkpoint_paths(out: Path, step: int) -> dict[str, Path]:
    stem = out / "checkpoints" / f"step_{step:07d}"
    return {"model": stem.with_suffix(".model.safetensors"), "ema": stem.with_suffix(".ema.safetensors"),
            "state": stem.with_suffix(".state.pt")}


def _save_checkpoint(out: Path, model: UNetModel, ema: EMA, optimizer: torch.optim.Optimizer,
                     data_rng: torch.Generator, step: int, config: TrainConfig) -> None:
    paths = _checkpoint_paths(out, step)
    save_weights(model, paths["model"], {"step": step})
    save_weights(ema.model, paths["ema"], {"step": step, "fraction": step / config.steps, **sampling_metadata(config)})
    save_state(paths["state"], {"step": step, "optimizer": optimizer.state_dict(), "rng": rng_state(),
                                "rng_data": data_rng.get_state(), "config": json.dumps(config.to_dict())})
    atomic_write_text(out / "checkpoints" / "latest.json", json.dumps({"step": step}))
    kept = sorted((out / "checkpoints").glob("step_*.state.pt"))[:-config.keep_checkpoints]
    for old in kept:
        for path in _checkpoint_paths(out, int(old.name.split(".")[0][5:])).values():
            path.unlink(missing_ok=True)


def _resume(out: Path, model: UNetModel, ema: EMA, optimizer: torch.optim.Optimizer, data_rng: torch.Generator,
            rank: int, device: torch.device, config: TrainConfig, extend: bool = False) -> int:
    """Restore the newest readable checkpoint; a damaged one (a killed disk, a bad copy) falls back to the one
    before it with a warning, never to a fresh start."""
    steps = _checkpoint_steps(out)
    for i, step in enumerate(steps):
        try:
            saved = _read_checkpoint(out, step, device)
        except DamagedState as err:
            if i + 1 == len(steps):
                raise UserError(f"{out}: every checkpoint is damaged (step {step}: {err}); use another --out") from None
            log.warning("checkpoint step %d is damaged (%s): resuming from step %d", step, err, steps[i + 1])
            continue
        _restore(out, saved, model, ema, optimizer, data_rng, rank, device, config, extend)
        return step
    return 0


def _checkpoint_steps(out: Path) -> list[int]:
    """Steps of the kept checkpoints, newest first (latest.json's first: it is written after the files)."""
    folder = out / "checkpoints"
    steps = sorted((int(p.name[5:12]) for p in folder.glob("step_*.state.pt")), reverse=True)
    try:
        latest = json.loads((folder / "latest.json").read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return steps
    if not isinstance(latest, int) or isinstance(latest, bool) or latest < 0:  # hand-edited: trust the files
        return steps
    return [latest] + [s for s in steps if s < latest]


def _read_checkpoint(out: Path, step: int, device: torch.device) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    paths = _checkpoint_paths(out, step)
    try:
        state = load_state(paths["state"], device)
        if state is None:
            raise DamagedState(f"{paths['state'].name} is missing")
        return {"unet_config": read_metadata(paths["model"])["unet_config"],
                "model": load_file(str(paths["model"]), device=str(device)),
                "ema": load_file(str(paths["ema"]), device=str(device)), "state": state}
    except (UserError, SafetensorError, OSError, KeyError) as err:
        raise DamagedState(str(err).splitlines()[0] if str(err) else type(err).__name__) from None


def _restore(out: Path, saved: dict, model: UNetModel, ema: EMA, optimizer: torch.optim.Optimizer,
             data_rng: torch.Generator, rank: int, device: torch.device, config: TrainConfig, extend: bool) -> None:
    if saved["unet_config"] != model.config.to_dict() | {"use_checkpoint": saved["unet_config"]["use_checkpoint"]}:
        raise UserError(f"{out} holds a run of a different UNet ({saved['unet_config']}); use another --out or the "
                        "same --unet")
    state = saved["state"]
    saved_config, current = json.loads(state["config"]), config.to_dict()
    fixed = [k for k in FIXED_ON_RESUME if not (extend and k in EXTENDABLE)]
    changed = changed_settings(saved_config, current, fixed)
    if changed:
        longer = not extend and not changed_settings(saved_config, current, set(fixed) - set(EXTENDABLE)) \
            and current["steps"] > saved_config["steps"]
        hint = " (to train it longer, add --extend)" if longer else ""
        raise UserError(f"{out} was trained with other settings ({', '.join(changed)}){hint}; resume with the same "
                        "ones or use another --out")
    if extend and rank == 0:
        _extension(out, state["step"], config)
    model.load_state_dict(saved["model"])
    ema.model.load_state_dict(saved["ema"])
    optimizer.load_state_dict(state["optimizer"])
    # runs checkpointed before facekit.resume kept the two generator states under their own keys
    restore_rng(state["rng"] if "rng" in state else {"cpu": state["rng_cpu"], "cuda": state["rng_cuda"]})
    data_rng.set_state(state["rng_data"].cpu())
    if rank:  # every rank resumes from rank 0's files; give each its own stream again
        torch.manual_seed(int(torch.randint(2**31, (1,)).item()) + rank)
