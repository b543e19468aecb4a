"""`distilswap distill`: the MobileFaceSwap student learns the teacher's swaps pair by pair (SPEC §3).

The run directory holds everything a rerun needs: `checkpoint.pt` (model, EMA, optimizer, scaler, step, RNG:
rerunning the same command continues exactly where it stopped), `tb/` (TensorBoard), `samples/` (grids
source | target | teacher | student | mask), and at the end `student.safetensors` (EMA weights),
`eval.json` / `eval.md` (held-out identities). DDP: launch with torchrun; one process per device.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.data import default_collate

from facekit.config import check_bounds
from facekit.experts.arcface import resize_to
from facekit.errors import UserError
from facekit.files import atomic_write
from facekit.pair_stream import ORDER_VERSION
from facekit.resume import DamagedState, InterruptFlag, changed_settings, load_state, restore_rng, rng_state, save_state
from facekit.training import EMA, Dist, native_bf16, setup_distributed
from distill.data import PairList, batch_indices, split_by_identity, training_batches
from distill.losses import LossWeights, background, build_perceptual, identity_loss, l1_per_sample, mask_loss
from distill.reweight import COMBINATIONS, normalize_mean_one, raw_coefficient, scores_for
from student.config import StudentConfig, scaled
from student.idn import fuse_with_target
from student.iin import BASE_KERNELS
from student.model import MobileFaceSwap

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class DistillConfig:
    resolution: int | None = None  # student resolution; None: the pairs' resolution
    width: float = 1.0  # channel multiplier of the student (1.0 = the paper's network)
    steps: int = 100_000
    batch_size: int = 16
    lr: float = 1e-4
    # The kernel predictor's convs output conv weights: one Adam step there moves every tap of every kernel at
    # once, and at the network's learning rate the kernels turn to noise (measured: a fresh student cannot
    # learn to copy its input at 2e-3; it can with the predictor at 0.05x).
    predictor_lr_scale: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    weights: LossWeights = field(default_factory=LossWeights)
    reweight: str = "product"  # a's combination (distill.reweight.COMBINATIONS); "off" is the ablation
    ema_decay: float = 0.999
    amp: bool = True  # fp16 + loss scaling on CUDA, bf16 on a CPU that computes it (else fp32)
    val_fraction: float = 0.2
    seed: int = 0
    log_every: int = 50
    sample_every: int = 1000
    checkpoint_every: int = 1000
    eval_batch_size: int = 32
    # Training pairs streamed from the shards (facekit.pair_stream) instead of drawn at random from memory;
    # sets too large for memory always stream. The data a step sees differs between the two, not its resume.
    stream: bool = False
    stream_workers: int = 2

    def __post_init__(self) -> None:
        if self.reweight not in COMBINATIONS:
            raise UserError(f"reweight must be one of {', '.join(COMBINATIONS)}, got {self.reweight!r}")
        # a negative lr would climb the loss, silently
        check_bounds(self, "distill settings", {name: 1 for name in ("steps", "batch_size", "log_every", "sample_every",
                                                                      "checkpoint_every", "eval_batch_size")},
                     above_zero=("lr", "predictor_lr_scale"))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def load_distill_config(path: str | None, overrides: Mapping[str, Any] | None = None) -> DistillConfig:
    """YAML preset (keys of DistillConfig; `weights:` a mapping) plus command-line overrides."""
    from facekit.config import read_yaml_mapping, settings

    data: dict[str, Any] = read_yaml_mapping(path, "distill settings (see configs/distill_*.yaml)") if path else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return settings(DistillConfig, data, str(path or "distill settings"), "distill settings")


# -- model ---------------------------------------------------------------------------------------------------
def build_student(config: DistillConfig, pair_resolution: int, identity_dim: int, init: str | None) -> MobileFaceSwap:
    """A new student (width × the paper's network) or one from a checkpoint (e.g. the imported official
    weights), which must agree with the config and the identity expert."""
    resolution = config.resolution or pair_resolution
    wanted = scaled(StudentConfig(resolution=resolution, identity_dim=identity_dim), config.width)
    if init is None:
        return MobileFaceSwap(wanted)
    from student.checkpoint import load_student

    model = load_student(init)
    if model.config != wanted:
        raise UserError(f"{init}: student checkpoint is {_describe(model.config)} but this run wants "
                        f"{_describe(wanted)}: set resolution/width in the distill config to match, or start fresh")
    return model.train()


def parameter_groups(student: MobileFaceSwap, config: DistillConfig) -> list[dict[str, Any]]:
    """The kernel predictor's convs at lr × predictor_lr_scale, everything else (its base kernels too) at lr."""
    slow = [p for name, p in student.named_parameters()
            if name.startswith("predictor.") and not name.startswith(BASE_KERNELS)]
    slow_ids = {id(p) for p in slow}
    rest = [p for p in student.parameters() if id(p) not in slow_ids]
    return [{"params": rest, "lr": config.lr}, {"params": slow, "lr": config.lr * config.predictor_lr_scale}]


def _describe(config: StudentConfig) -> str:
    return (f"{config.resolution}² encoder {list(config.encoder_channels)} identity {config.identity_dim}")


# -- one step ------------------------------------------------------------------------------------------------
def compute_losses(student: nn.Module, embedder: nn.Module, parser: nn.Module | None, perceptual: nn.Module,
                   batch: Mapping[str, Any], a: torch.Tensor, weights: LossWeights, resolution: int,
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its per-term batch means (for the logs)."""
    source, target, teacher = (resize_to(batch[k], resolution) for k in ("source", "target", "swap"))
    with torch.no_grad():
        embedding, feature_map = embedder(source)
        keep = background(target, teacher, resize_to(batch["mask"], resolution), parser)
    image, mask = student(target, embedding, feature_map, fuse=False)
    image, mask = image.float(), mask.float()
    output = fuse_with_target(image, mask, target)
    output_embedding, output_map = embedder(output)  # one forward for the identity and expert-perceptual terms
    l1 = l1_per_sample(output, teacher)
    perc = perceptual(output, teacher, output_map)
    ident = identity_loss(output_embedding, embedding)
    weak = mask_loss(mask, keep)
    generated = l1_per_sample(image, teacher)
    total = (a * (weights.l1 * l1 + weights.perceptual * perc + weights.image * generated)).mean()
    total = total + weights.identity * ident.mean() + weights.mask * weak.mean()
    terms = {"l1": l1.mean(), "perceptual": perc.mean(), "image": generated.mean(), "identity": ident.mean(),
             "mask": weak.mean()}
    return total, terms


def pair_weights(pairs: PairList, combination: str, scores: Mapping[str, Mapping[str, float]] | None,
                 source: str) -> dict[str, float]:
    """Unnormalised a per training pair. Each step scales its batch's a to mean 1, so a step's loss is a
    weighted mean and its size does not swing with the batch's total weight. Measured against a normalised
    once over the training split (README, DiffFace evidence): per batch gave the lower face error on two of
    three held-out sets, the same on the third. It needs batches that mix teacher snapshots (one per shard):
    the stream reads several shards at a time for that (facekit.pair_stream)."""
    if combination == "off":
        return {pid: 1.0 for pid in pairs.pair_ids}
    if scores is None:
        raise UserError("reweighting needs scores: run `distilswap quality score` first, or pass --reweight off")
    cosine, quality = scores_for(pairs.pair_ids, scores, source)
    return dict(zip(pairs.pair_ids, raw_coefficient(cosine, quality, combination).tolist()))


# -- the EMA's BatchNorm statistics ------------------------------------------------------------------------------
RECALIBRATION_BATCHES = 16


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, embedder: nn.Module, train: PairList, config: DistillConfig,
                          resolution: int, device: torch.device) -> nn.Module:
    """Recompute the BatchNorm statistics of `model` (the EMA) on training batches, as SWA does, and leave it in
    eval mode. The EMA averages weights but carries the live model's statistics, which do not fit the averaged
    weights: on the synthetic evidence runs the evaluated student's fusion mask over the face fell to 0.15–0.37
    (0.02 in one run) where the same weights in training mode gave 0.5–0.9, and leaked onto the background in
    another. The batches are the first of epoch 0: the same for every call, no RNG drawn (resume stays exact)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the batches below
    model.train()
    for step in range(min(RECALIBRATION_BATCHES, len(train) // config.batch_size)):
        batch = _to_device(default_collate([train[i] for i in batch_indices(len(train), config.batch_size,
                                                                            config.seed, step)]), device)
        target, source = resize_to(batch["target"], resolution), resize_to(batch["source"], resolution)
        model(target, *embedder(source))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return model.eval()


# -- the loop ------------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """What one distillation run trains and reads, built once by `_prepare`."""

    dist: Dist
    train: PairList
    val: PairList
    weight_of: Mapping[str, float]
    student: MobileFaceSwap
    ema: EMA
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    perceptual: nn.Module
    perceptual_kind: str
    inputs: dict[str, str]  # what the run learns from, beyond its settings (checked on resume)
    step: int

    @property
    def resolution(self) -> int:
        return self.student.config.resolution


def distill(pairs: PairList, embedder: nn.Module, parser: nn.Module | None, config: DistillConfig,
            run_dir: str | Path, scores: Mapping[str, Mapping[str, float]] | None = None, scores_source: str = "",
            init: str | None = None, vgg_weights: str | None = None, device: str | None = None,
            progress: bool = True, judge: nn.Module | None = None, judge_name: str = "") -> dict[str, Any]:
    """Train (or resume) in run_dir; returns the final evaluation (also written to eval.json / eval.md).
    judge: an identity model not used in training, for the evaluation's identity similarity."""
    run_dir = Path(run_dir)
    run = _prepare(pairs, embedder, parser, config, run_dir, scores, scores_source, init, vgg_weights, device)
    _train_steps(run, embedder, parser, config, run_dir, progress)
    run.dist.close()
    if not run.dist.main:
        return {}
    return _finish(run, embedder, config, run_dir, judge, judge_name)


def _prepare(pairs: PairList, embedder: nn.Module, parser: nn.Module | None, config: DistillConfig, run_dir: Path,
             scores: Mapping[str, Mapping[str, float]] | None, scores_source: str, init: str | None,
             vgg_weights: str | None, device: str | None) -> _Run:
    """Split the pairs by identity, build (or resume) the student and its optimiser, put the experts on the device."""
    dist = setup_distributed(device)
    train_idx, val_idx = split_by_identity(pairs.identities, config.val_fraction, config.seed)
    train, val = pairs.subset(train_idx), pairs.subset(val_idx)
    weight_of = pair_weights(train, config.reweight, scores, scores_source)
    embedder.to(dist.device)
    if parser is not None:
        parser.to(dist.device)
    identity_dim = _identity_dim(embedder, train[0]["source"], dist.device)
    torch.manual_seed(config.seed)
    student = build_student(config, pairs.resolution, identity_dim, init).to(dist.device).train()
    if student.config.resolution != pairs.resolution:
        log.info("pairs are %d², the student trains at %d²: images are resized on the fly", pairs.resolution,
                 student.config.resolution)
    ema = EMA(student, config.ema_decay)
    optimizer = torch.optim.Adam(parameter_groups(student, config), betas=config.betas)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and dist.device.type == "cuda")
    perceptual, perceptual_kind = build_perceptual(vgg_weights, embedder, parser)
    inputs = _inputs(pairs, weight_of, parser, perceptual_kind, config.stream or not train.in_memory)
    step = _resume(run_dir, student, ema, optimizer, scaler, config, inputs, dist.device)
    return _Run(dist, train, val, weight_of, student, ema, optimizer, scaler, perceptual.to(dist.device),
                perceptual_kind, inputs, step)


def _inputs(pairs: PairList, weight_of: Mapping[str, float], parser: nn.Module | None,
            perceptual_kind: str, streamed: bool) -> dict[str, str]:
    """The data and loss inputs a resumed run must share with the one that wrote its checkpoint; pair_order
    names the order the pairs come in (the stream's changes with its ORDER_VERSION)."""
    weights = hashlib.sha256(json.dumps(sorted(weight_of.items())).encode()).hexdigest()[:16]
    return {"pairs": pairs.fingerprint, "pair_weights": weights, "parser": "on" if parser is not None else "off",
            "perceptual": perceptual_kind, "pair_order": f"stream/{ORDER_VERSION}" if streamed else "memory"}


def _train_steps(run: _Run, embedder: nn.Module, parser: nn.Module | None, config: DistillConfig, run_dir: Path,
                 progress: bool) -> None:
    """The loop from the resumed step to config.steps, with logs, sample grids and checkpoints."""
    from tqdm import tqdm

    dist, student = run.dist, run.student
    model: nn.Module = student
    if dist.world > 1:
        on_gpu = [dist.device.index] if dist.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(student, device_ids=on_gpu)
    amp_dtype = torch.float16 if dist.device.type == "cuda" else torch.bfloat16
    amp = config.amp and (dist.device.type == "cuda" or native_bf16(dist.device))
    if config.amp and not amp:
        log.info("distill: amp off, this CPU has no native bf16 (emulated bf16 is slower than fp32)")
    per_epoch = len(run.train) // (config.batch_size * dist.world)
    used = per_epoch * config.batch_size * dist.world
    log.info("distill: %d train pairs / %d held-out (%d identities); each epoch uses %d pairs, %d left out by "
             "batching (a different draw each epoch); reweight=%s; perceptual=%s", len(run.train), len(run.val),
             len(set(run.val.identities)), used, len(run.train) - used, config.reweight, run.perceptual_kind)
    writer = _writer(run_dir) if dist.main else None
    preview = _preview_batch(run.val, dist.device)
    bar = tqdm(total=config.steps, initial=run.step, desc="distill", unit="step", disable=not (progress and dist.main))
    next_batch = training_batches(run.train, config.batch_size, config.seed, run.step, dist.rank, dist.world,
                                  config.stream, config.stream_workers)
    interrupted = InterruptFlag()
    try:
        while run.step < config.steps:
            batch = _to_device(default_collate(next_batch()), dist.device)
            a = normalize_mean_one(torch.tensor([run.weight_of[pid] for pid in batch["pair_id"]], device=dist.device))
            with torch.autocast(dist.device.type, dtype=amp_dtype, enabled=amp):
                loss, terms = compute_losses(model, embedder, parser, run.perceptual, batch, a, config.weights,
                                             run.resolution)
            if not torch.isfinite(loss):
                raise UserError(f"loss became {loss.item()} at step {run.step}: lower the learning rate "
                                "(the last checkpoint is kept)")
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.ema.update(student)
            run.step += 1
            bar.update(1)
            if writer is not None and (run.step % config.log_every == 0 or run.step == config.steps):
                _log_scalars(writer, loss, terms, a, run.step)
                bar.set_postfix(loss=f"{loss.item():.4f}", id=f"{terms['identity'].item():.3f}")
            if dist.main and (run.step % config.sample_every == 0 or run.step == config.steps):
                recalibrate_batchnorm(run.ema.model, embedder, run.train, config, run.resolution, dist.device)
                save_grid(run.ema.model, embedder, preview, run_dir / "samples" / f"step_{run.step:07d}.png",
                          run.resolution)
            if dist.main and (run.step % config.checkpoint_every == 0 or run.step == config.steps or interrupted.raised):
                _save_checkpoint(run_dir, run, config)
            if interrupted.raised:
                break
    finally:
        interrupted.restore()
        bar.close()
        if writer is not None:
            writer.close()
    if interrupted.raised:
        raise KeyboardInterrupt


def _log_scalars(writer, loss: torch.Tensor, terms: Mapping[str, torch.Tensor], a: torch.Tensor, step: int) -> None:
    writer.add_scalar("loss/total", loss.item(), step)
    for name, value in terms.items():
        writer.add_scalar(f"loss/{name}", value.item(), step)
    writer.add_scalar("reweight/a_max", a.max().item(), step)
    writer.add_scalar("reweight/a_min", a.min().item(), step)


def _finish(run: _Run, embedder: nn.Module, config: DistillConfig, run_dir: Path, judge: nn.Module | None,
            judge_name: str) -> dict[str, Any]:
    """Save the EMA student (with BatchNorm statistics of its own weights) and evaluate it on the held-out pairs."""
    from distill.evaluate import evaluate, write_table
    from student.checkpoint import save_student

    recalibrate_batchnorm(run.ema.model, embedder, run.train, config, run.resolution, run.dist.device)
    save_student(run.ema.model, run_dir / "student.safetensors",
                 extra={"steps": str(run.step), "reweight": config.reweight, "perceptual": run.perceptual_kind})
    result = evaluate(run.ema.model, embedder, run.val, run.resolution, config.eval_batch_size, judge, judge_name)
    result["run"] = {"steps": run.step, "reweight": config.reweight, "seed": config.seed,
                     "perceptual": run.perceptual_kind, "train_pairs": len(run.train), "val_pairs": len(run.val),
                     "config": config.to_dict()}
    write_table(result, run_dir)
    return result


def _identity_dim(embedder: nn.Module, image: torch.Tensor, device: torch.device) -> int:
    with torch.no_grad():
        embedding, feature_map = embedder(image[None].to(device))
    if feature_map.shape[1] != embedding.shape[1] or tuple(feature_map.shape[-2:]) != (7, 7):
        raise UserError(f"the identity expert gives an embedding of {embedding.shape[1]} and a feature map of "
                        f"{list(feature_map.shape[1:])}; the student needs C and C×7×7 (an IR-SE ArcFace at 112²)")
    return int(embedding.shape[1])


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device).float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


def _preview_batch(val: PairList, device: torch.device, count: int = 4) -> dict[str, Any]:
    return _to_device(default_collate([val[i] for i in range(min(count, len(val)))]), device)


@torch.no_grad()
def save_grid(student: nn.Module, embedder: nn.Module, batch: Mapping[str, Any], path: Path, resolution: int) -> Path:
    """One row per pair: source | target | teacher | student | mask."""
    from torchvision.utils import make_grid, save_image

    source, target, teacher = (resize_to(batch[k], resolution) for k in ("source", "target", "swap"))
    output, mask = student(target, *embedder(source))
    tiles = torch.stack([source, target, teacher, output.float().clamp(0, 1), mask.float().expand_as(output)], dim=1)
    grid = make_grid(tiles.flatten(0, 1).cpu(), nrow=5, padding=2)
    return atomic_write(path, lambda temp: save_image(grid, temp))


def _writer(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tb"))


def _save_checkpoint(run_dir: Path, run: _Run, config: DistillConfig) -> Path:
    """Everything an exact resume needs, written atomically (a crash mid-save keeps the previous one)."""
    state = {
        "format": "distilswap-distill/1",
        "step": run.step,
        "config": json.dumps(config.to_dict()),
        "inputs": json.dumps(run.inputs),
        "student_config": json.dumps(run.student.config.to_dict()),
        "student": run.student.state_dict(),
        "ema": run.ema.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rng_state(),
    }
    return save_state(run_dir / CHECKPOINT, state)


# What may differ between the run that wrote a checkpoint and the one resuming it (the rest changes results).
RESUMABLE_CHANGES = {"steps", "log_every", "sample_every", "checkpoint_every", "eval_batch_size"}


def _resume(run_dir: Path, student: MobileFaceSwap, ema: EMA, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, config: DistillConfig, inputs: dict[str, str], device: torch.device) -> int:
    """Load run_dir's checkpoint if there is one -> the step to continue from (0 for a fresh run)."""
    path = run_dir / CHECKPOINT
    try:
        state = load_state(path, device)
    except DamagedState as err:
        raise UserError(f"{path}: unreadable checkpoint ({err}); move it away to start over") from None
    if state is None:
        return 0
    if state.get("format") != "distilswap-distill/1":
        raise UserError(f"{path}: not a distill checkpoint; use another --out directory")
    saved = json.loads(state["student_config"])
    if saved != student.config.to_dict():
        raise UserError(f"{path}: the run there trains a student of another configuration ({saved['resolution']}² "
                        f"encoder {saved['encoder_channels']}); use another --out directory or the same settings")
    before, now = _with_defaults(json.loads(state["config"])), config.to_dict()
    changed = changed_settings(before, now, sorted(set(now) - RESUMABLE_CHANGES))
    if "inputs" in state:  # checkpoints written before the inputs were recorded resume unchecked
        saved_inputs = json.loads(state["inputs"])
        if "pair_order" not in saved_inputs:  # written before the order was recorded: the stream's has changed
            if inputs["pair_order"] != "memory":
                log.warning("%s was written before the pair stream mixed shards: the run resumes, but reads its "
                            "pairs in the new order, not the one it began with (not bit-exact)", path)
            saved_inputs["pair_order"] = inputs["pair_order"]
        changed += [f"{key} ({saved_inputs.get(key)} -> {value})" for key, value in inputs.items()
                    if saved_inputs.get(key) != value]
    if changed:
        raise UserError(f"{path}: cannot resume with changed {', '.join(changed)}; use another --out directory")
    student.load_state_dict(state["student"])
    ema.model.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    # checkpoints written before facekit.resume kept the CPU state alone under "rng"
    restore_rng(state["rng"] if isinstance(state["rng"], dict) else {"cpu": state["rng"], "cuda": state["cuda_rng"]})
    log.info("resumed %s at step %d", path, state["step"])
    return int(state["step"])


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the keys added since it was written at their defaults (which keep the old
    behaviour), so a run started by an older version resumes."""
    defaults = DistillConfig().to_dict()
    return {**defaults, **saved, "weights": {**defaults["weights"], **saved.get("weights", {})}}
