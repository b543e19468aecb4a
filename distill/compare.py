"""`distilswap compare`: several distillation runs' held-out tables side by side (the reweighting ablation,
seeds, configs), as Markdown and a bar chart, with the teacher, the do-nothing floor and the ceiling beside
them so a difference between runs can be read against the gap it could close.

Runs evaluated on the same held-out pairs are compared row by row. Runs of several seeds (each seed holds out
other identities) are grouped by their held-out set, and each setting ("arm": the run's config without its
seed) gets its mean ± sd over the splits and the number of splits where it was the best of the arms: one good
seed does not make a method better.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from facekit.errors import UserError
from facekit.files import atomic_write, read_json

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
# Config keys that do not change what a run learns: runs differing only in these are the same arm.
NOT_ARM = ("seed", "log_every", "sample_every", "checkpoint_every", "eval_batch_size")


@dataclass(frozen=True)
class Run:
    path: Path
    result: dict[str, Any]

    @property
    def split(self) -> str:
        return self.result["held_out"]

    @property
    def arm(self) -> dict[str, Any]:
        """The settings that make this run what it is: its config without the seed, at the steps it ran."""
        info = self.result.get("run", {})
        config = {k: v for k, v in info.get("config", {"reweight": info.get("reweight")}).items() if k not in NOT_ARM}
        config["steps"] = info.get("steps")
        return config

    @property
    def label(self) -> str:
        info = self.result.get("run", {})
        return f"{self.path.name} (reweight {info.get('reweight', '?')}, {info.get('steps', '?')} steps)"


def read_run(run: str | Path) -> Run:
    path = Path(run) / "eval.json"
    if not path.is_file():
        raise UserError(f"{run}: no eval.json (is it a finished `distilswap distill` run directory?)")
    result = read_json(path, "rerun the same `distilswap distill` command on that directory to re-evaluate it")
    if "held_out" not in result:
        raise UserError(f"{path}: written by an older DistilSwap (no held-out fingerprint); rerun the same "
                        "`distilswap distill` command on that directory to re-evaluate it")
    return Run(Path(run), result)


def read_runs(runs: Sequence[str | Path]) -> dict[str, list[Run]]:
    """-> runs grouped by held-out set (in the order given). All must be judged by the same identity model."""
    if not runs:
        raise UserError("compare needs at least one run directory")
    loaded = [read_run(run) for run in runs]
    judge = loaded[0].result.get("identity_judge")
    for run in loaded[1:]:
        if run.result.get("identity_judge") != judge:
            raise UserError(f"{run.path}: identity judged by {run.result.get('identity_judge')!r}, not {judge!r}; "
                            "compare runs judged by the same model")
    splits: dict[str, list[Run]] = {}
    for run in loaded:
        splits.setdefault(run.split, []).append(run)
    return splits


def split_rows(runs: Sequence[Run]) -> dict[str, dict[str, float]]:
    """One held-out set: a row per run, then the reference rows."""
    rows = {run.label: run.result["student"] for run in runs}
    for name in REFERENCE_ROWS:
        if name in runs[0].result:
            rows[name] = runs[0].result[name]
    return rows


def arm_labels(splits: dict[str, list[Run]]) -> dict[str, str]:
    """Arm (settings, as sorted JSON) -> "reweight X" plus whatever else differs between the arms."""
    arms: dict[str, dict[str, Any]] = {}
    for runs in splits.values():
        keys = [json.dumps(run.arm, sort_keys=True) for run in runs]
        if len(set(keys)) < len(keys):
            raise UserError(f"{runs[0].path.parent}: two runs with the same settings on one held-out set "
                            "(same seed twice?); compare each once")
        arms.update((key, run.arm) for key, run in zip(keys, runs) if key not in arms)
    first = next(iter(arms.values()))
    differing = sorted(k for k in first if k != "reweight" and len({json.dumps(a.get(k)) for a in arms.values()}) > 1)
    return {key: ", ".join([f"reweight {arm.get('reweight')}", *(f"{k} {arm.get(k)}" for k in differing)])
            for key, arm in arms.items()}


def series(splits: dict[str, list[Run]]) -> dict[str, dict[str, list[float]]]:
    """Per row and metric, one value per held-out set. Rows: each run (one set) or each arm (several sets),
    then the reference rows."""
    labels = arm_labels(splits) if len(splits) > 1 else {}
    out: dict[str, dict[str, list[float]]] = {}
    for runs in splits.values():
        named = [(labels.get(json.dumps(run.arm, sort_keys=True), run.label), run.result["student"]) for run in runs]
        named += [(name, runs[0].result[name]) for name in REFERENCE_ROWS if name in runs[0].result]
        for name, metrics in named:
            for key, value in metrics.items():
                if value is not None:
                    out.setdefault(name, {}).setdefault(key, []).append(value)
    return out


def wins(splits: dict[str, list[Run]]) -> dict[str, dict[str, int]]:
    """Per arm and metric: in how many held-out sets it was the best of the arms there."""
    labels = arm_labels(splits)
    counts: dict[str, dict[str, int]] = {}
    for runs in splits.values():
        for key, _, lower in COLUMNS:
            scored = [(run.result["student"][key], labels[json.dumps(run.arm, sort_keys=True)]) for run in runs
                      if run.result["student"].get(key) is not None]
            if len(scored) > 1:
                best = (min if lower else max)(scored)[1]
                counts.setdefault(best, {}).setdefault(key, 0)
                counts[best][key] += 1
    return counts


def summary_rows(splits: dict[str, list[Run]]) -> dict[str, dict[str, str]]:
    """Across held-out sets: "mean ± sd (wins/sets)" per arm and metric; reference rows as mean ± sd."""
    best = wins(splits)
    rows: dict[str, dict[str, str]] = {}
    for name, metrics in series(splits).items():
        cells = {}
        for key, values in metrics.items():
            cell = f"{statistics.mean(values):.4g}" + (f" ± {statistics.stdev(values):.2g}" if len(values) > 1 else "")
            if name not in REFERENCE_ROWS:
                cell += f" ({best.get(name, {}).get(key, 0)}/{len(values)})"
            cells[key] = cell
        rows[name] = cells
    return rows


def format_markdown(rows: dict[str, dict[str, Any]], note: str = "") -> str:
    header = "| | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [header, "|---" + "|---:" * len(COLUMNS) + "|"]
    for name, metrics in rows.items():
        cells = [_cell(metrics.get(key)) for key, _, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\n{note}\n" if note else "\n")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else f"{value:.4g}"


def report(splits: dict[str, list[Run]]) -> str:
    """The Markdown `compare` prints: one table for one held-out set; else the summary, then each set's table."""
    judge = f"Identity judged by {next(iter(splits.values()))[0].result.get('identity_judge', '?')}."
    if len(splits) == 1:
        return format_markdown(split_rows(next(iter(splits.values()))), judge)
    parts = [f"Across {len(splits)} held-out sets (one per seed): mean ± sd over the sets, and (in brackets) in how "
             "many sets each setting was the best of the settings compared.\n",
             format_markdown(summary_rows(splits), judge)]
    for index, runs in enumerate(splits.values(), 1):
        seeds = sorted({str(run.result.get("run", {}).get("seed", "?")) for run in runs})
        parts.append(f"\nHeld-out set {index} (seed {', '.join(seeds)}; {runs[0].result['pairs']} pairs):\n")
        parts.append(format_markdown(split_rows(runs)))
    return "\n".join(parts)


def save_chart(bars: dict[str, dict[str, list[float]]], path: str | Path) -> Path:
    """One panel per metric, one bar per row (reference rows hatched); error bars: sd over held-out sets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in COLUMNS if any(c[0] in m for m in bars.values())]
    figure, axes = plt.subplots(1, len(columns), figsize=(2.6 * len(columns), 3.4), dpi=100, squeeze=False)
    names = list(bars)
    for axis, (key, title, lower) in zip(axes[0], columns):
        for i, name in enumerate(names):
            series = bars[name].get(key)
            if series:
                error = statistics.stdev(series) if len(series) > 1 else None
                axis.bar(i, statistics.mean(series), yerr=error, capsize=3, color=f"C{i}",
                         hatch="//" if name in REFERENCE_ROWS else None)
        axis.set_title(f"{title}\n({'lower' if lower else 'higher'} is better)", fontsize=8)
        axis.set_xticks([])
    figure.legend([plt.Rectangle((0, 0), 1, 1, color=f"C{i}") for i in range(len(names))], names,
                  loc="lower center", ncol=2, fontsize=7)
    figure.tight_layout(rect=(0, 0.08 + 0.03 * (len(names) // 2), 1, 1))
    try:
        return atomic_write(path, figure.savefig)
    finally:
        plt.close(figure)
