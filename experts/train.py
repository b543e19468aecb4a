"""The three experts, small, trained on the synthetic world: what the demo, the tests and the benchmark use
when no official weights are around. Same classes as the real experts (`IRSEArcFace`, `BiSeNet`, `EyeNet`)
at small widths, so every later stage runs the same code on them.

- embedder: IRSEArcFace with a 512x7x7 map (the student's weight predictor needs it), trained with an
  ArcFace additive angular margin head over the training identities; scored by verification accuracy on
  identities it never saw (same/different pairs, best threshold).
- parser: BiSeNet, per-pixel cross-entropy on the rendered labels; scored by mIoU on unseen identities.
- gaze: EyeNet on crops from the 5 landmarks (`crop_eyes`), L1 on (pitch, yaw); scored by angular error.

Faces are rendered on the fly from per-step seeds (an endless, exactly reproducible data stream), so a run
resumes bit-for-bit from its last partial checkpoint
(NAME.partial.pt, through facekit.resume). A directory holds one file pair per expert
(NAME.safetensors + NAME.json with class, arguments, config and scores); an expert whose config is
unchanged is reused, not retrained. Every command loads them through facekit.experts.expert_loader.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from facekit.world import synthetic
from facekit.config import read_yaml_mapping, settings
from facekit.errors import UserError
from facekit.experts.expert_loader import EXPERTS, construct, read_record
from facekit.files import atomic_write, atomic_write_text
from facekit.resume import DamagedState, load_state, save_state

VERSION = 1  # bump when training code changes what a config produces


@dataclass(frozen=True)
class EmbedderConfig:
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    widths: tuple[int, ...] = (16, 32, 64, 512)
    embedding_dim: int = 512
    input_size: int = 112
    steps: int = 200
    batch_size: int = 24
    lr: float = 2e-3
    margin: float = 0.2      # ArcFace additive angular margin (radians); small trains faster from scratch
    scale: float = 30.0      # logit scale s
    dropout: float = 0.0     # on the feature map before fc while training (IR-SE's own is 0.5: too slow for minutes)
    # Each batch holds two views (independent pose/expression/lighting/context) of batch_size/2 people,
    # and a contrastive loss (temperature 0.1) pulls each view to its partner. Measured on the demo
    # budget (60 steps): margin loss alone 0.52 verification accuracy (an untrained net: 0.55), with
    # pairs 0.67; 200 steps with pairs: 0.84.
    pair_weight: float = 1.0
    temperature: float = 0.1
    eval_identities: int = 40
    eval_per_identity: int = 4


@dataclass(frozen=True)
class ParserConfig:
    width: float = 0.25
    input_size: int = 64
    steps: int = 500
    batch_size: int = 16
    lr: float = 5e-3
    eval_samples: int = 64
    # Per-class CE weights ∝ frequency^-balance: with plain CE (0) a short run learns only background,
    # skin, hair and neck, and every eye, brow, nose and lip pixel stays at IoU 0.
    balance: float = 0.5


@dataclass(frozen=True)
class GazeConfig:
    nstack: int = 1
    nfeatures: int = 16
    nlandmarks: int = 8
    image_size: int = 128    # faces are drawn at this size before the 96x160 eye crops
    steps: int = 15
    batch_size: int = 4      # faces per step (two eye crops each)
    lr: float = 1e-3
    eval_samples: int = 24


@dataclass(frozen=True)
class ExpertsConfig:
    """Everything that decides the trained experts: equal configs give equal weights."""

    seed: int = 0
    train_identities: int = 200
    checkpoint_every: int = 25
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    parser: ParserConfig = field(default_factory=ParserConfig)
    gaze: GazeConfig = field(default_factory=GazeConfig)


PRESETS_DIR = Path(__file__).resolve().parent / "presets"  # demo, full, tiny: YAML over the defaults above


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def make_config(preset: str = "demo", overrides: dict[str, Any] | None = None) -> ExpertsConfig:
    """A preset, then nested overrides (e.g. from YAML: {"embedder": {"steps": 50}, "seed": 1})."""
    if preset not in preset_names():
        raise UserError(f"unknown experts preset {preset!r}; choose one of {', '.join(preset_names())}")
    merged = _merge(read_yaml_mapping(PRESETS_DIR / f"{preset}.yaml", "experts settings"), overrides or {})
    return settings(ExpertsConfig, merged, f"experts preset {preset}", "experts settings")


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


# ---------------------------------------------------------------------------------------------------------
# The data stream: faces of the training identities, drawn from per-step seeds.


def train_people(config: ExpertsConfig) -> synthetic.Params:
    return synthetic.sample_identities(config.train_identities, config.seed)


def test_people(config: ExpertsConfig, n: int) -> synthetic.Params:
    """People no expert trained on (another seed stream)."""
    return synthetic.sample_identities(n, 10_000_019 + config.seed)


def _faces(people: synthetic.Params, who: torch.Tensor, seed: int, size: int) -> dict[str, torch.Tensor]:
    identities = synthetic.index(people, who)
    attributes = synthetic.sample_attributes(len(who), seed)
    contexts = synthetic.match_neck(synthetic.sample_contexts(len(who), seed + 1), identities)
    return synthetic.render_batch(identities, attributes, contexts, size)


def _step_seed(config: ExpertsConfig, expert: str, step: int) -> int:
    return (config.seed * 1000 + EXPERTS.index(expert)) * 1_000_003 + 2 * step


def _batch(config: ExpertsConfig, expert: str, step: int, n: int, size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    seed = _step_seed(config, expert, step)
    who = torch.randint(config.train_identities, (n,), generator=torch.Generator().manual_seed(seed))
    return _faces(train_people(config), who, seed, size), who


# ---------------------------------------------------------------------------------------------------------
# Models and their losses.


class ArcMarginHead(nn.Module):
    """ArcFace: logits s·cos(θ + m) for the true class, s·cos θ for the others (Deng et al. 2019)."""

    def __init__(self, embedding_dim: int, classes: int, margin: float, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, embedding_dim) * 0.01)
        self.margin, self.scale = margin, scale

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1)).clamp(-1 + 1e-6, 1 - 1e-6)
        theta = torch.acos(cos)
        target = F.one_hot(labels, cos.shape[1]).bool()
        # Past θ = π - m, cos(θ + m) would rise again; fall back to a linear penalty there (insightface).
        margin_cos = torch.where(theta + self.margin < math.pi, torch.cos(theta + self.margin), cos - self.margin * math.sin(self.margin))
        return self.scale * torch.where(target, margin_cos, cos)


def build(expert: str, config: ExpertsConfig) -> tuple[nn.Module, dict[str, Any]]:
    """The expert network and the constructor arguments saved with it."""
    if expert == "embedder":
        c = config.embedder
        kwargs = {"blocks": list(c.blocks), "widths": list(c.widths), "embedding_dim": c.embedding_dim,
                  "input_size": c.input_size}
    elif expert == "parser":
        kwargs = {"n_classes": 19, "input_size": config.parser.input_size, "width": config.parser.width}
    elif expert == "gaze":
        c = config.gaze
        kwargs = {"nstack": c.nstack, "nfeatures": c.nfeatures, "nlandmarks": c.nlandmarks}
    else:
        raise UserError(f"unknown expert {expert!r}; choose from {', '.join(EXPERTS)}")
    return construct(expert, kwargs), kwargs


class _Task:
    """One expert's training: its model, extra trainable modules, and loss on a step's batch."""

    def __init__(self, expert: str, config: ExpertsConfig):
        self.expert, self.config = expert, config
        torch.manual_seed(_step_seed(config, expert, -1))  # initialisation: equal configs, equal weights
        self.model, self.kwargs = build(expert, config)
        self.heads = nn.ModuleDict()
        if expert == "embedder":
            c = config.embedder
            self.heads["margin"] = ArcMarginHead(c.embedding_dim, config.train_identities, c.margin, c.scale)
        if expert == "parser":
            self.class_weights = class_weights(config)
        self.section = getattr(config, expert)
        if expert == "embedder":
            self.model.dropout.p = config.embedder.dropout

    def modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"model": self.model, "heads": self.heads})

    def loss(self, step: int) -> torch.Tensor:
        c, cfg = self.section, self.config
        if self.expert == "embedder":
            faces, who = _pair_batch(cfg, step)
            z, _ = self.model(faces["image"])
            margin_loss = F.cross_entropy(self.heads["margin"](z, who), who)
            similarity = (z @ z.T / c.temperature).fill_diagonal_(-1e4)
            half = len(who) // 2
            partner = torch.cat([torch.arange(half) + half, torch.arange(half)])
            return margin_loss + c.pair_weight * F.cross_entropy(similarity, partner)
        if self.expert == "parser":
            faces, _ = _batch(cfg, "parser", step, c.batch_size, c.input_size)
            return F.cross_entropy(self.model(faces["image"]), faces["labels"], weight=self.class_weights)
        faces, _ = _batch(cfg, "gaze", step, c.batch_size, c.image_size)
        _, gaze = self.model(_eye_crops(faces))
        return F.l1_loss(gaze, faces["gaze"].repeat(2, 1))


def _pair_batch(config: ExpertsConfig, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """batch_size/2 distinct training people, each drawn twice with independent attributes and context."""
    seed = _step_seed(config, "embedder", step)
    half = max(1, config.embedder.batch_size // 2)
    people = torch.randperm(config.train_identities, generator=torch.Generator().manual_seed(seed))[:half]
    who = torch.cat([people, people])
    return _faces(train_people(config), who, seed, config.embedder.input_size), who


def class_weights(config: ExpertsConfig, samples: int = 256) -> torch.Tensor:
    """[19] CE weights from label frequencies of the training stream (mean 1 over the classes that occur)."""
    who = torch.arange(samples) % config.train_identities
    labels = _faces(train_people(config), who, _step_seed(config, "parser", -2), config.parser.input_size)["labels"]
    frequency = torch.bincount(labels.flatten(), minlength=19).float() / labels.numel()
    weights = torch.where(frequency > 0, frequency.clamp_min(1e-6) ** -config.parser.balance, torch.zeros(()))
    return weights * (frequency > 0).sum() / weights.sum()


def _eye_crops(faces: dict[str, torch.Tensor]) -> torch.Tensor:
    from facekit.experts.eyenet import crop_eyes

    return crop_eyes(faces["image"], faces["landmarks5"])


# ---------------------------------------------------------------------------------------------------------
# Scores on identities no expert trained on.


@torch.no_grad()
def evaluate(expert: str, model: nn.Module, config: ExpertsConfig) -> dict[str, float]:
    model.eval()
    if expert == "embedder":
        return {"verification_accuracy": verification_accuracy(model, config)}
    if expert == "parser":
        c = config.parser
        faces = _faces(test_people(config, c.eval_samples), torch.arange(c.eval_samples), _eval_seed(config, 1), c.input_size)
        return {"miou": mean_iou(model(faces["image"]).argmax(1), faces["labels"])}
    c = config.gaze
    faces = _faces(test_people(config, c.eval_samples), torch.arange(c.eval_samples), _eval_seed(config, 2), c.image_size)
    from facekit.metrics import angular_error

    _, gaze = model(_eye_crops(faces))
    predicted = gaze.view(2, c.eval_samples, 2).mean(0)
    baseline = faces["gaze"].mean(0, keepdim=True).expand_as(faces["gaze"])  # always answer the mean gaze
    return {"angular_error_deg": float(angular_error(predicted, faces["gaze"]).mean()),
            "mean_gaze_baseline_deg": float(angular_error(baseline, faces["gaze"]).mean())}


def _eval_seed(config: ExpertsConfig, which: int) -> int:
    return 20_000_033 + config.seed * 10 + which


def verification_accuracy(embedder: nn.Module, config: ExpertsConfig) -> float:
    """Best-threshold accuracy on all same-identity pairs and as many different-identity pairs, among
    eval_per_identity images of each of eval_identities unseen people."""
    c = config.embedder
    who = torch.arange(c.eval_identities).repeat_interleave(c.eval_per_identity)
    faces = _faces(test_people(config, c.eval_identities), who, _eval_seed(config, 0), c.input_size)
    z = torch.cat([embedder(chunk)[0] for chunk in faces["image"].split(64)])
    similarity = z @ z.T
    i, j = torch.triu_indices(len(who), len(who), offset=1)
    same = who[i] == who[j]
    positives = similarity[i[same], j[same]]
    negatives = similarity[i[~same], j[~same]]
    generator = torch.Generator().manual_seed(config.seed)
    negatives = negatives[torch.randperm(len(negatives), generator=generator)[: len(positives)]]
    return best_threshold_accuracy(positives, negatives)


def best_threshold_accuracy(positives: torch.Tensor, negatives: torch.Tensor) -> float:
    """Accuracy of the best rule `same iff score > t` over all thresholds t."""
    scores = torch.cat([positives, negatives])
    labels = torch.cat([torch.ones_like(positives), torch.zeros_like(negatives)])
    order = torch.argsort(scores, descending=True)
    labels = labels[order]
    # Threshold after the k highest scores: k-prefix called "same".
    true_pos = torch.cat([torch.zeros(1), torch.cumsum(labels, 0)])
    false_pos = torch.cat([torch.zeros(1), torch.cumsum(1 - labels, 0)])
    correct = true_pos + (len(negatives) - false_pos)
    return float(correct.max() / len(labels))


def mean_iou(predicted: torch.Tensor, labels: torch.Tensor, classes: int = 19) -> float:
    """Mean IoU over the classes present in the labels or the prediction."""
    ious = []
    for c in range(classes):
        p, t = predicted == c, labels == c
        union = (p | t).sum()
        if union > 0:
            ious.append(float((p & t).sum() / union))
    return sum(ious) / len(ious)


# ---------------------------------------------------------------------------------------------------------
# Training with checkpoints, resume and reuse.


def train_experts(
    out: str | Path, config: ExpertsConfig, experts: tuple[str, ...] = EXPERTS, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Train (or reuse) each expert into `out`; returns {expert: its JSON record (scores, time, ...)}.
    An expert configured with 0 steps is skipped (the demo preset skips gaze: experts/presets/demo.yaml)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for expert in experts:
        if getattr(config, expert).steps <= 0:
            if progress:
                print(f"{expert}: skipped (0 steps in this config)")
            continue
        record = _cached(out, expert, config)
        if record is None:
            record = _train_one(out, expert, config, progress)
        elif progress:
            print(f"{expert}: reusing {out / (expert + '.safetensors')} (same config)")
        results[expert] = record
    write_results(out, results)
    return results


def _section(expert: str, config: ExpertsConfig) -> dict[str, Any]:
    """What decides one expert's weights: its own section plus the shared world settings."""
    return {"version": VERSION, "seed": config.seed, "train_identities": config.train_identities,
            expert: dataclasses.asdict(getattr(config, expert))}


def _cached(out: Path, expert: str, config: ExpertsConfig) -> dict[str, Any] | None:
    meta = out / f"{expert}.json"
    if not (meta.exists() and (out / f"{expert}.safetensors").exists()):
        return None
    record = read_record(out, expert)
    return record if record.get("config") == _jsonable(_section(expert, config)) else None


def _train_one(out: Path, expert: str, config: ExpertsConfig, progress: bool) -> dict[str, Any]:
    from tqdm import tqdm

    task = _Task(expert, config)
    modules = task.modules()
    optimizer = torch.optim.Adam(modules.parameters(), lr=task.section.lr)
    steps = task.section.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    start, elapsed = _resume(out, expert, config, modules, optimizer, schedule)
    modules.train()
    bar = tqdm(range(start, steps), desc=expert, unit="step", initial=start, total=steps, disable=not progress)
    began = time.perf_counter()
    for step in bar:
        torch.manual_seed(_step_seed(config, expert, step) + 1)  # dropout: exact resume
        loss = task.loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < steps:
            _save_partial(out, expert, config, modules, optimizer, schedule, step + 1,
                          elapsed + time.perf_counter() - began)
    bar.close()
    train_seconds = elapsed + time.perf_counter() - began
    scores = evaluate(expert, task.model, config)
    record = {
        "class": type(task.model).__name__,
        "kwargs": task.kwargs,
        "config": _jsonable(_section(expert, config)),
        "scores": scores,
        "train_seconds": round(train_seconds, 1),
        "parameters": sum(p.numel() for p in task.model.parameters()),
    }
    _save_tensors(out / f"{expert}.safetensors", task.model.state_dict())
    atomic_write_text(out / f"{expert}.json", json.dumps(record, indent=2) + "\n")
    _partial(out, expert).unlink(missing_ok=True)
    return record


def _partial(out: Path, expert: str) -> Path:
    return out / f"{expert}.partial.pt"


def _resume(out: Path, expert: str, config: ExpertsConfig, modules: torch.nn.Module,
            optimizer: torch.optim.Optimizer, schedule) -> tuple[int, float]:
    """(step, seconds trained) of a partial run with this config; a partial of another config starts over."""
    try:
        state = load_state(_partial(out, expert))
    except DamagedState as err:
        print(f"{expert}: the partial checkpoint is damaged ({err}): starting over")
        return 0, 0.0
    if state is None or state["config"] != json.dumps(_section(expert, config)):
        return 0, 0.0
    modules.load_state_dict(state["modules"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    print(f"{expert}: resuming at step {state['step']}")
    return state["step"], state["seconds"]


def _save_partial(out: Path, expert: str, config: ExpertsConfig, modules: torch.nn.Module,
                  optimizer: torch.optim.Optimizer, schedule, step: int, seconds: float) -> None:
    save_state(_partial(out, expert), {"config": json.dumps(_section(expert, config)), "step": step,
                                       "seconds": seconds, "modules": modules.state_dict(),
                                       "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()})


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda temp: save_file(state, str(temp)))


SCORE_NAMES = {"verification_accuracy": "verification accuracy", "miou": "mIoU",
               "angular_error_deg": "gaze angular error (deg)", "mean_gaze_baseline_deg": "  (answer-the-mean baseline)"}


def results_table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| expert | class | parameters | train s | score | value |", "|---|---|---|---|---|---|"]
    for expert, record in results.items():
        for name, value in record["scores"].items():
            lines.append(f"| {expert} | {record['class']} | {record['parameters']:,} | {record['train_seconds']} | "
                         f"{SCORE_NAMES.get(name, name)} | {value:.4f} |")
    return "\n".join(lines)


def write_results(out: Path, results: dict[str, dict[str, Any]]) -> None:
    """results.json and results.md over every expert in the directory (not only the ones just trained)."""
    everything = {e: read_record(out, e) for e in EXPERTS if (out / f"{e}.json").exists()}
    everything.update(results)
    atomic_write_text(out / "results.json", json.dumps({e: {"scores": r["scores"], "train_seconds": r["train_seconds"]}
                                                    for e, r in everything.items()}, indent=2) + "\n")
    atomic_write_text(out / "results.md", "# Small experts on the synthetic world\n\n" + results_table(everything) + "\n")
