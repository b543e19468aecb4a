"""`distilswap compare`: several distillation runs' held-out tables side by side (the reweighting ablation,
seeds, configs), as Markdown and a bar chart, with the teacher, the do-nothing floor and the ceiling beside
them so a difference between runs can be read against the gap it could close."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from facekit.errors import UserError
from facekit.imageio import atomic_write

# (eval.json key, column title, lower is better)
COLUMNS = (
    ("truth_l1", "L1 vs truth (image)", True),
    ("truth_l1_face", "L1 vs truth (face)", True),
    ("truth_psnr_face", "PSNR face dB", False),
    ("truth_ssim", "SSIM", False),
    ("id_sim_source", "id sim to source", False),
    ("l1_vs_teacher", "L1 vs teacher", True),
    ("mask_iou_teacher", "mask IoU", False),
)
REFERENCE_ROWS = ("teacher", "teacher, final snapshot", "target (no swap)", "ground truth")


def read_eval(run: str | Path) -> dict[str, Any]:
    path = Path(run) / "eval.json"
    if not path.is_file():
        raise UserError(f"{run}: no eval.json (is it a finished `distilswap distill` run directory?)")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path}: unreadable evaluation ({err})") from None


def run_label(result: dict[str, Any], run: str | Path) -> str:
    info = result.get("run", {})
    return f"{Path(run).name} (reweight {info.get('reweight', '?')}, {info.get('steps', '?')} steps)"


def compare_rows(runs: Sequence[str | Path]) -> tuple[dict[str, dict[str, float]], str]:
    """-> (row title -> metrics, identity judge). Runs must be evaluated on the same held-out pairs by the same
    judge, or their numbers are not comparable."""
    if not runs:
        raise UserError("compare needs at least one run directory")
    results = [read_eval(run) for run in runs]
    first = results[0]
    for run, result in zip(runs[1:], results[1:]):
        for key in ("pairs", "identities", "identity_judge"):
            if result.get(key) != first.get(key):
                raise UserError(f"{run}: evaluated on other held-out pairs or by another identity judge ({key} "
                                f"{result.get(key)!r} vs {first.get(key)!r}); compare runs of the same pairs")
    rows = {run_label(result, run): result["student"] for run, result in zip(runs, results)}
    for name in REFERENCE_ROWS:
        if name in first:
            rows[name] = first[name]
    return rows, str(first.get("identity_judge", "?"))


def format_markdown(rows: dict[str, dict[str, float]], judge: str) -> str:
    header = "| | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [header, "|---" + "|---:" * len(COLUMNS) + "|"]
    for name, metrics in rows.items():
        cells = ["" if metrics.get(key) is None else f"{metrics[key]:.4g}" for key, _, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nIdentity judged by {judge}.\n"


def save_chart(rows: dict[str, dict[str, float]], path: str | Path) -> Path:
    """One panel per metric the runs have, one bar per row (reference rows hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in COLUMNS if any(m.get(c[0]) is not None for m in rows.values())]
    figure, axes = plt.subplots(1, len(columns), figsize=(2.6 * len(columns), 3.4), dpi=100, squeeze=False)
    names = list(rows)
    for axis, (key, title, lower) in zip(axes[0], columns):
        values = [rows[n].get(key) for n in names]
        for i, (name, value) in enumerate(zip(names, values)):
            if value is not None:
                axis.bar(i, value, color=f"C{i}", hatch="//" if name in REFERENCE_ROWS else None)
        axis.set_title(f"{title}\n({'lower' if lower else 'higher'} is better)", fontsize=8)
        axis.set_xticks([])
    figure.legend([plt.Rectangle((0, 0), 1, 1, color=f"C{i}") for i in range(len(names))], names,
                  loc="lower center", ncol=2, fontsize=7)
    figure.tight_layout(rect=(0, 0.08 + 0.03 * (len(names) // 2), 1, 1))
    try:
        return atomic_write(path, figure.savefig)
    finally:
        plt.close(figure)
