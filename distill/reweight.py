"""The loss-reweighting coefficient a (SPEC §3) and the scores file that carries it from `quality score` to
`distill`.

a = cos²(z_src, z_teacher) · Q(teacher output) by default: a teacher swap counts in proportion to how much of
the source identity it kept and how finished the teacher looked when it made it. The paper's exact
combination was not recovered, so it is a named choice here, and "off" (a = 1) is the ablation.
Scores are written next to the pairs in their own file keyed by pair id: the shards are never rewritten.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import torch

from facekit.errors import UserError
from facekit.files import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

COMBINATIONS = ("product", "identity", "quality", "off")
SCORES_FORMAT = "distilswap-scores/1"
SCORES_FILENAME = "scores.json"


def identity_term(cosine: torch.Tensor) -> torch.Tensor:
    """cos² with negative cosines clamped to 0 first: a swap pointing away from the source gets no weight,
    not the weight of a perfect one."""
    return cosine.clamp(min=0.0) ** 2


def raw_coefficient(cosine: torch.Tensor, quality: torch.Tensor, combination: str = "product") -> torch.Tensor:
    """Unnormalised a per pair from the teacher's identity cosine and Q's score (both [N])."""
    if combination not in COMBINATIONS:
        raise UserError(f"unknown reweighting combination {combination!r}; choose one of {', '.join(COMBINATIONS)}")
    if combination == "product":
        return identity_term(cosine) * quality.clamp(min=0.0)
    if combination == "identity":
        return identity_term(cosine)
    if combination == "quality":
        return quality.clamp(min=0.0)
    return torch.ones_like(cosine)


def normalize_mean_one(values: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale to mean 1 so reweighting changes the balance between pairs, not the loss scale (and so the
    learning rate means the same with and without it). All-zero input gives all ones."""
    mean = values.mean()
    if mean <= eps:
        return torch.ones_like(values)
    return values / mean


def coefficient(cosine: torch.Tensor, quality: torch.Tensor, combination: str = "product") -> torch.Tensor:
    return normalize_mean_one(raw_coefficient(cosine, quality, combination))


def write_scores(path: str | Path, pair_ids: Sequence[str], columns: Mapping[str, Sequence[float]],
                 meta: Mapping[str, object]) -> Path:
    """Atomic JSON: {format, meta, scores: {pair_id: {column: value}}}; a crash never leaves half a file."""
    path = Path(path)
    if len(set(pair_ids)) != len(pair_ids):
        raise UserError(f"pair ids are not unique ({len(pair_ids) - len(set(pair_ids))} duplicates): cannot key scores")
    for name, values in columns.items():
        if len(values) != len(pair_ids):
            raise ValueError(f"column {name} has {len(values)} values for {len(pair_ids)} pairs")
    scores = {pid: {name: float(values[i]) for name, values in columns.items()} for i, pid in enumerate(pair_ids)}
    payload = {"format": SCORES_FORMAT, "meta": dict(meta), "scores": scores}
    return atomic_write_text(path, json.dumps(payload, indent=1))


def read_scores(path: str | Path) -> tuple[dict[str, dict[str, float]], dict[str, object]]:
    """-> (scores by pair id, meta). Refuses files that are not ours with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no scores file; run `distilswap quality score` first (or pass --reweight off)")
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable scores file ({err}); rerun `distilswap quality score`") from None
    if not isinstance(payload, dict) or payload.get("format") != SCORES_FORMAT:
        raise UserError(f"{path}: not a DistilSwap scores file (format {payload.get('format') if isinstance(payload, dict) else None!r})")
    return payload["scores"], payload.get("meta", {})


def scores_for(pair_ids: Sequence[str], scores: Mapping[str, Mapping[str, float]], source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(identity cosine, Q score) for the given pairs; every pair must be scored (no silent defaults)."""
    missing = [pid for pid in pair_ids if pid not in scores]
    if missing:
        raise UserError(
            f"{source}: {len(missing)} of {len(pair_ids)} pairs have no score (first: {missing[0]}); "
            "the scores belong to other pairs: rerun `distilswap quality score` on these pairs"
        )
    cosine = torch.tensor([scores[pid]["id_cosine"] for pid in pair_ids])
    quality = torch.tensor([scores[pid]["quality"] for pid in pair_ids])
    return cosine, quality


def check_scores_match(meta: Mapping[str, object], fingerprint: str, source: str, reweight: str) -> None:
    """Refuse scores computed on another pair set, even one with the same pair ids; say so when they were scored
    with another combination than `distill --reweight` uses (a is recomputed from Q and the cosine, so the run
    is right, but the user may have meant the combination they scored with)."""
    if meta.get("pairs_fingerprint") != fingerprint:
        raise UserError(f"{source}: these scores were computed on another pair set (fingerprint "
                        f"{meta.get('pairs_fingerprint')} vs {fingerprint}); rerun `distilswap quality score` on these pairs")
    scored_with = meta.get("combination")
    if scored_with and scored_with != reweight:
        log.warning("%s was scored with --combination %s; distill weighs the pairs with "
                    "--reweight %s (recomputed from the same scores): pass --reweight %s to use the scored one",
                    source, scored_with, reweight, scored_with)


def save_histogram(values: torch.Tensor, path: str | Path, title: str) -> Path:
    """PNG histogram of a (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.2), dpi=100)
    axis.hist(values.numpy(), bins=min(40, max(5, len(values) // 4)), color="#4477aa")
    axis.axvline(1.0, color="k", lw=0.8, ls="--")
    axis.set_xlabel("reweighting coefficient a (mean 1)")
    axis.set_ylabel("pairs")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    try:
        return atomic_write(path, figure.savefig)
    finally:
        plt.close(figure)
