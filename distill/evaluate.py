"""The end-of-run table on held-out identities: the student against its teacher (L1, identity similarity to
the source, mask IoU with the teacher's blend mask) and, where the pairs carry the perfect swap (synthetic
world), both against ground truth with `facekit.metrics.swap_metrics`, so every stage reports the same numbers.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from facekit.arcface import resize_to
from distill.data import PairList


def mask_iou(predicted: torch.Tensor, reference: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-sample IoU of two soft masks [B,1,H,W] thresholded at 0.5; 1 when both are empty."""
    a, b = predicted > threshold, reference > threshold
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@torch.no_grad()
def evaluate(student: nn.Module, embedder: nn.Module, pairs: PairList, resolution: int,
             batch_size: int = 32) -> dict[str, Any]:
    """Means over the pairs of {"student": {...}, "teacher": {...}}; numbers are at the student's resolution."""
    from facekit.metrics import swap_metrics

    student.eval()
    device = next(student.parameters()).device
    totals: dict[tuple[str, str], list[float]] = {}  # (model, metric) -> [sum, count], NaNs (empty masks) left out

    def add(name: str, key: str, values: torch.Tensor) -> None:
        values = values.flatten().float().cpu()
        values = values[~torch.isnan(values)]
        entry = totals.setdefault((name, key), [0.0, 0])
        entry[0] += float(values.sum())
        entry[1] += len(values)

    count = 0
    for batch in DataLoader(pairs, batch_size=batch_size, shuffle=False):
        source, target, teacher, blend = (resize_to(batch[k].to(device).float(), resolution)
                                          for k in ("source", "target", "swap", "mask"))
        z_source, feature_map = embedder(source)
        output, mask = student(target, z_source, feature_map)
        output = output.float().clamp(0, 1)
        n = source.shape[0]
        add("student", "l1_vs_teacher", (output - teacher).abs().flatten(1).mean(1))
        add("student", "id_sim_source", _cosine(embedder(output)[0], z_source))
        add("teacher", "id_sim_source", _cosine(embedder(teacher)[0], z_source))
        add("student", "mask_iou_teacher", mask_iou(mask.float(), blend))
        if pairs.has_truth:
            truth = resize_to(batch["truth"].to(device).float(), resolution)
            face = blend[:, 0] > 0.5  # the teacher's blend mask: the target's face, the region a swap changes
            for name, image in (("student", output), ("teacher", teacher)):
                add(name, "truth_l1", (image - truth).abs().flatten(1).mean(1))
                for key, value in swap_metrics(image, truth, source, target, face).items():
                    add(name, f"truth_{key}", torch.full((n,), value))
        count += n
    result: dict[str, Any] = {"student": {}, "teacher": {}, "pairs": count, "identities": len(set(pairs.identities))}
    for (name, key), (total, seen) in totals.items():
        result[name][key] = total / seen if seen else float("nan")
    return result


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1)


def format_table(result: dict[str, Any]) -> str:
    """Markdown: one row per model, one column per metric (blank where a metric does not apply)."""
    from facekit.metrics import format_table as metrics_table

    rows = {name: result[name] for name in ("student", "teacher")}
    header = f"Held-out identities: {result['identities']} ({result['pairs']} pairs)\n\n"
    return header + metrics_table(rows)


def write_table(result: dict[str, Any], run_dir: str | Path) -> None:
    run_dir = Path(run_dir)
    clean = json.loads(json.dumps(result, default=float).replace("NaN", "null"))
    (run_dir / "eval.json").write_text(json.dumps(clean, indent=1))
    (run_dir / "eval.md").write_text(format_table(result) + "\n")

