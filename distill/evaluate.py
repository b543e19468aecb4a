"""The end-of-run table on held-out identities: the student against its teacher (L1, identity similarity to
the source, mask IoU with the teacher's blend mask) and, where the pairs carry the perfect swap (synthetic
world), both against ground truth with `facekit.metrics.swap_metrics`, so every stage reports the same numbers.

Identity similarity is measured by a *judge*. The student was trained to please the training embedder, so
that embedder flatters it (the student can raise the cosine without looking more like the source); face-swap
papers measure identity with a second recognition model, and so does `distill --judge`. The table says which
one measured. Rows: the student; the teacher over all its snapshots (what the student learned from); the
teacher's final snapshot alone (what a user would deploy); and, on the synthetic world, the target itself
(the floor: a student that learned nothing copies it) and the ground truth (the ceiling the judge allows).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from facekit.experts.arcface import resize_to
from facekit.files import atomic_write_text
from distill.data import PairList

ROWS = ("student", "teacher", "teacher, final snapshot", "target (no swap)", "ground truth")


def mask_iou(predicted: torch.Tensor, reference: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-sample IoU of two soft masks [B,1,H,W] thresholded at 0.5; 1 when both are empty."""
    a, b = predicted > threshold, reference > threshold
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


class _Means:
    """Running means per (row, metric); NaNs (empty masks) are left out."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], list[float]] = {}

    def add(self, row: str, key: str, values: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        values = values.flatten().float().cpu()
        if keep is not None:
            values = values[keep.cpu()]
        values = values[~torch.isnan(values)]
        entry = self.totals.setdefault((row, key), [0.0, 0])
        entry[0] += float(values.sum())
        entry[1] += len(values)

    def rows(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for (row, key), (total, seen) in self.totals.items():
            out.setdefault(row, {})[key] = total / seen if seen else float("nan")
        return out


@torch.no_grad()
def evaluate(student: nn.Module, embedder: nn.Module, pairs: PairList, resolution: int, batch_size: int = 32,
             judge: nn.Module | None = None, judge_name: str = "") -> dict[str, Any]:
    """Means over the pairs, one dict per row of ROWS that applies; numbers are at the student's resolution.
    judge measures identity (default: the training embedder, named as such in the result)."""
    from facekit.metrics import swap_metrics

    student.eval()
    device = next(student.parameters()).device
    judge = judge.to(device) if judge is not None else embedder
    fractions = pairs.fractions
    final = fractions.max() - 1e-6  # fractions at or above this are the final snapshot's
    means = _Means()
    for batch in DataLoader(pairs, batch_size=batch_size, shuffle=False):
        source, target, teacher, blend = (resize_to(batch[k].to(device).float(), resolution)
                                          for k in ("source", "target", "swap", "mask"))
        z_source, feature_map = embedder(source)
        output, mask = student(target, z_source, feature_map)
        output = output.float().clamp(0, 1)
        last = batch["fraction"].float() >= final
        z_judge = z_source if judge is embedder else judge(source)[0]
        means.add("student", "l1_vs_teacher", (output - teacher).abs().flatten(1).mean(1))
        means.add("student", "mask_iou_teacher", mask_iou(mask.float(), blend))
        images = {"student": output, "teacher": teacher}
        if pairs.has_truth:
            images["target (no swap)"] = target
            images["ground truth"] = resize_to(batch["truth"].to(device).float(), resolution)
        for row, image in images.items():
            similarity = _cosine(judge(image)[0], z_judge)
            means.add(row, "id_sim_source", similarity)
            if row == "teacher":
                means.add("teacher, final snapshot", "id_sim_source", similarity, last)
        if pairs.has_truth:
            face = blend[:, 0] > 0.5  # the teacher's blend mask: the target's face, the region a swap changes
            truth = images["ground truth"]
            for row in ("student", "teacher", "target (no swap)"):
                means.add(row, "truth_l1", (images[row] - truth).abs().flatten(1).mean(1))
                for key, value in swap_metrics(images[row], truth, source, target, face).items():
                    means.add(row, f"truth_{key}", torch.full((source.shape[0],), value))
    rows = means.rows()
    result: dict[str, Any] = {row: rows[row] for row in ROWS if row in rows}
    result.update(pairs=len(pairs), identities=len(set(pairs.identities)), held_out=pairs.fingerprint,
                  final_snapshot_pairs=int((fractions >= final).sum()),
                  identity_judge=judge_name or "the training embedder (flatters the student: it was trained against it)")
    return result


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1)


def format_table(result: dict[str, Any]) -> str:
    """Markdown: one row per model, one column per metric (blank where a metric does not apply)."""
    from facekit.metrics import format_table as metrics_table

    rows = {name: result[name] for name in ROWS if name in result}
    header = (f"Held-out identities: {result['identities']} ({result['pairs']} pairs; final snapshot: "
              f"{result['final_snapshot_pairs']}). Identity judged by {result['identity_judge']}.\n\n")
    return header + metrics_table(rows)


def write_table(result: dict[str, Any], run_dir: str | Path) -> None:
    run_dir = Path(run_dir)
    clean = json.loads(json.dumps(result, default=float).replace("NaN", "null"))
    atomic_write_text(run_dir / "eval.json", json.dumps(clean, indent=1))
    atomic_write_text(run_dir / "eval.md", format_table(result) + "\n")
