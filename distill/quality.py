"""The quality regressor Q: a torchvision ResNet-18 that reads one teacher swap and predicts how far the
teacher's training had got when it made it (0..1), trained with L2 as in MobileFaceSwap. Its score is a
no-reference quality: late snapshots make better swaps, so Q(output) ranks swaps by how finished they look.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, default_collate

from facekit.config import check_bounds
from facekit.experts.arcface import imagenet_normalize, resize_to
from facekit.errors import UserError
from distill.data import PairList, split_by_identity, training_batches

log = logging.getLogger(__name__)
FORMAT = "distilswap-quality/1"


@dataclass(frozen=True)
class QualityConfig:
    input_size: int = 224
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0
    stream: bool = False  # read training pairs as a stream from the shards (always, for sets larger than memory)

    def __post_init__(self) -> None:
        # batch ≥ 2: BatchNorm in training mode needs two values per channel
        check_bounds(self, "quality settings", {"input_size": 32, "steps": 1, "batch_size": 2}, above_zero=("lr",),
                     non_negative=("weight_decay",))


class QualityRegressor(nn.Module):
    """ResNet-18 with a one-unit head and a sigmoid (the target is a fraction). Input: RGB [0,1], any size."""

    def __init__(self, input_size: int = 224):
        super().__init__()
        from torchvision.models import resnet18

        self.input_size = input_size
        self.net = resnet18(weights=None)  # never downloads; local ImageNet weights go through load_imagenet
        self.net.fc = nn.Linear(self.net.fc.in_features, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = imagenet_normalize(resize_to(images, self.input_size))
        return torch.sigmoid(self.net(x)[:, 0])


def load_imagenet(model: QualityRegressor, path: str | None) -> str:
    """Initialise the trunk from a local torchvision resnet18 state dict (the fc is ours). -> what was done."""
    if path is None:
        log.info("quality regressor: random init (no --imagenet-weights file given; nothing is downloaded)")
        return "random init"
    if not Path(path).is_file():
        raise UserError(f"{path}: no such ImageNet weights file (torchvision resnet18 state dict)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors of a foreign or damaged file
        raise UserError(f"{path}: not a loadable torch state dict ({type(err).__name__}: {err})") from None
    state = {k: v for k, v in state.items() if not k.startswith("fc.")} if isinstance(state, dict) else None
    expected = {k for k in model.net.state_dict() if not k.startswith("fc.")}
    if state is None or set(state) != expected:
        raise UserError(f"{path}: not a torchvision ResNet-18 state dict (keys differ); pass resnet18 weights")
    try:
        model.net.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise UserError(f"{path}: ResNet-18 weights of the wrong shape ({str(err).splitlines()[-1].strip()})") from None
    log.info("quality regressor: ImageNet init from %s", path)
    return f"imagenet:{Path(path).name}"


@torch.no_grad()
def predict(model: QualityRegressor, pairs: PairList, batch_size: int = 64) -> torch.Tensor:
    """Q's score for every pair's teacher swap, in pair order."""
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(pairs, batch_size=batch_size, shuffle=False)
    return torch.cat([model(batch["swap"].to(device).float()).cpu() for batch in loader])


def evaluate_fit(predicted: torch.Tensor, fraction: torch.Tensor) -> dict[str, float]:
    """MAE and Spearman rank correlation with the true training fraction (Spearman: does Q rank swaps right)."""
    from scipy.stats import spearmanr

    mae = float((predicted - fraction).abs().mean())
    if predicted.std() == 0 or fraction.std() == 0:
        rho = float("nan")  # undefined for constant inputs; reported as such, never as 0
    else:
        rho = float(spearmanr(predicted.numpy(), fraction.numpy()).statistic)
    return {"mae": mae, "spearman": rho, "count": int(len(fraction))}


def train_quality(pairs: PairList, config: QualityConfig, imagenet_weights: str | None = None,
                  progress: bool = True, device: str = "cpu") -> tuple[QualityRegressor, dict[str, object]]:
    """Fit Q on the train identities; report MAE / Spearman on the held-out identities."""
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    train_idx, val_idx = split_by_identity(pairs.identities, config.val_fraction, config.seed)
    train, val = pairs.subset(train_idx), pairs.subset(val_idx)
    if len(train) < 2:
        raise UserError(f"{len(train)} training pair(s) after holding out {len(val)}: lower --val-fraction or "
                        "generate more pairs")
    model = QualityRegressor(config.input_size)
    init = load_imagenet(model, imagenet_weights)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    next_batch = training_batches(train, min(config.batch_size, len(train)), config.seed, stream=config.stream)
    step, bar = 0, tqdm(total=config.steps, desc="quality train", unit="step", disable=not progress)
    model.train()
    while step < config.steps:
        batch = default_collate(next_batch())
        loss = F.mse_loss(model(batch["swap"].to(device).float()), batch["fraction"].to(device).float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(l2=f"{loss.item():.4f}")
    bar.close()
    fraction = val.fractions
    report = {
        "init": init,
        "train_pairs": len(train),
        "val_pairs": len(val),
        "val_identities": len(set(val.identities)),
        "val": evaluate_fit(predict(model, val), fraction),
        "config": asdict(config),
    }
    log.info("quality val (held-out identities): MAE %.4f, Spearman %.3f over %d pairs",
             report["val"]["mae"], report["val"]["spearman"], len(val))
    return model.cpu(), report


def save_quality(model: QualityRegressor, path: str | Path, pair_resolution: int, report: dict[str, object]) -> Path:
    from safetensors.torch import save_file

    from facekit.files import atomic_write

    path = Path(path)
    metadata = {"format": FORMAT, "input_size": str(model.input_size), "pair_resolution": str(pair_resolution),
                "report": json.dumps(report)}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda temp: save_file(state, str(temp), metadata=metadata))
    return path


def load_quality(path: str | Path, pair_resolution: int | None = None) -> QualityRegressor:
    """Load Q; with pair_resolution, refuse a model trained on pairs of another resolution (its scores would
    measure resizing, not quality)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such quality model; train one with `distilswap quality train`")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
    except Exception as err:
        raise UserError(f"{path}: not a readable safetensors file ({err})") from None
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path}: not a DistilSwap quality model (format {metadata.get('format')!r})")
    trained_on = int(metadata["pair_resolution"])
    if pair_resolution is not None and trained_on != pair_resolution:
        raise UserError(f"{path}: quality model was trained on {trained_on}² pairs but these pairs are "
                        f"{pair_resolution}²: train Q on pairs like the ones you score")
    model = QualityRegressor(int(metadata["input_size"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"{path}: quality model weights do not fit ResNet-18 ({str(err).splitlines()[0]})") from None
    return model.eval()


def score_pairs(pairs: PairList, model: QualityRegressor, combination: str = "product") -> dict[str, torch.Tensor]:
    """Per pair: Q's score, the teacher's identity term cos², and a normalised to mean 1 over the data set (for
    the histogram and the record; `distill` recomputes a from the two scores and scales it per batch)."""
    from distill.reweight import coefficient, identity_term

    quality = predict(model, pairs)
    cosine = pairs.id_cosines
    return {
        "quality": quality,
        "id_cosine": cosine,
        "id_similarity_sq": identity_term(cosine),
        "a": coefficient(cosine, quality, combination),
    }

