"""The pipeline report: one HTML page (and the same as Markdown) over a `distilswap run` directory.

It only reads what the stages wrote, by convention each into `RUN/<stage>/`: result tables (`*.md`),
pictures (`*.png`: contact sheets, sample grids, histograms, the bench chart), TensorBoard logs (drawn
here as loss curves) and the export's artifacts with their verification. So it imports no stage, and a
new stage shows up in the report without code changes.
"""
from __future__ import annotations

import html
from pathlib import Path

from facekit.errors import UserError
from facekit.files import read_json
from facekit.quiet import quiet_third_party

MAX_PICTURES_PER_STAGE = 6


def stage_records(run: Path) -> list[dict]:
    """Finished stages in the order they ran, from `distilswap run`'s markers."""
    records = []
    for marker in (run / ".stages").glob("*.json"):
        record = read_json(marker, f"delete it and rerun `distilswap run` (stage {marker.stem} runs again)")
        records.append({"name": marker.stem, **record})
    return sorted(records, key=lambda r: r.get("order", 0))


def loss_curves(stage_dir: Path, out_png: Path) -> Path | None:
    """Every scalar of the stage's TensorBoard logs, one panel per tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, tuple[list[int], list[float]]] = {}
    for events in sorted(stage_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        with quiet_third_party("tensorboard"):  # its directory watcher logs "No path found after ..." at INFO
            accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            points = accumulator.Scalars(tag)
            steps, values = series.setdefault(tag, ([], []))
            steps += [p.step for p in points]
            values += [p.value for p in points]
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = sorted(series)[:12]
    columns = min(4, len(tags))
    rows = (len(tags) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    for axis, tag in zip(axes.flat, tags):
        steps, values = series[tag]
        order = sorted(range(len(steps)), key=steps.__getitem__)
        axis.plot([steps[i] for i in order], [values[i] for i in order], linewidth=1)
        axis.set_title(tag, fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(tags):]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(out_png, dpi=110)
    plt.close(figure)
    return out_png


def _pictures(stage_dir: Path) -> list[Path]:
    """The newest few PNGs of a stage (sample grids are written every N steps: the last ones tell most);
    a data set's own images and label maps are data, not results."""
    pictures = [p for p in stage_dir.rglob("*.png") if not {"images", "labels"} & set(p.relative_to(stage_dir).parts)]
    return sorted(pictures, key=lambda p: p.stat().st_mtime)[-MAX_PICTURES_PER_STAGE:]


def pairs_sheet(stage_dir: Path, out_png: Path, per_shard: int = 2, max_rows: int = 12) -> Path | None:
    """source | target | teacher swap | ground truth (when the pairs carry it), a few pairs of every shard
    (a diffusion teacher uses one snapshot per shard, so the rows go from early to final snapshots)."""
    import torch

    from facekit.faces.imageio import write_image
    from facekit.pairs import PairDataset

    if not (stage_dir / "manifest.json").is_file() or not (stage_dir / "shards").is_dir():
        return None
    data = PairDataset(stage_dir)
    first: dict[str, int] = {}
    for i, record in enumerate(data.records):
        first.setdefault(record["shard"], i)
    picked = [i for i, record in enumerate(data.records) if i - first[record["shard"]] < per_shard][:max_rows]
    rows = []
    for i in picked:
        item = data[i]
        rows.append(torch.cat([item[k] for k in ("source", "target", "swap", "truth") if k in item], dim=2))
    if not rows:
        return None
    return write_image(out_png, torch.cat(rows, dim=1).permute(1, 2, 0).numpy())


def _tables(stage_dir: Path) -> list[tuple[Path, str]]:
    return [(p, p.read_text()) for p in sorted(stage_dir.rglob("*.md")) if p.name.lower() != "readme.md"]


def _artifacts(stage_dir: Path) -> list[tuple[str, int]]:
    files = [p for p in sorted(stage_dir.rglob("*")) if p.is_file() and p.suffix in (".onnx", ".ort", ".npz", ".swift", ".py")]
    packages = [p for p in sorted(stage_dir.glob("*.mlpackage")) if p.is_dir()]
    sized = [(str(p.relative_to(stage_dir)), p.stat().st_size) for p in files]
    sized += [(p.name, sum(f.stat().st_size for f in p.rglob("*") if f.is_file())) for p in packages]
    return sized


def _verification(stage_dir: Path) -> str | None:
    """The export's checks as a Markdown table (artifact, check, ok, value, bound)."""
    report = stage_dir / "verification.json"
    if not report.is_file():
        return None
    data = read_json(report, f"write it again with `distilswap export verify {stage_dir}`")
    checks = data.get("checks", [])
    rows = ["| artifact | check | ok | value | bound |", "|---|---|---|---|---|"]
    rows += [
        f"| {c.get('artifact')} | {c.get('check')} | {'yes' if c.get('ok') else 'NO'} | "
        f"{'' if c.get('value') is None else format(c['value'], '.3g')} | {'' if c.get('bound') is None else c['bound']} |"
        for c in checks
    ]
    rows += [f"| {name} | left out (missed its bound) | NO | {entry.get('value', '')} | {entry.get('bound', '')} |"
             for name, entry in data.get("skipped", {}).items()]
    return "\n".join(rows)


def write_report(run: str | Path) -> tuple[Path, Path]:
    """-> (report.html, report.md) inside `run`."""
    run = Path(run)
    records = stage_records(run)
    if not records:
        raise UserError(f"{run}: no finished stages (run `distilswap run --config ...` first)")
    md = ["# DistilSwap pipeline report", "", f"Run directory: `{run}`", "", "| stage | seconds | command |", "|---|---|---|"]
    md += [f"| {r['name']} | {r.get('seconds', '')} | `distilswap {' '.join(r.get('argv', []))}` |" for r in records]
    body = [f"<h1>DistilSwap pipeline report</h1><p>Run directory: <code>{html.escape(str(run))}</code></p>", _html_stage_table(records)]
    for record in records:
        stage_dir = run / record["name"]
        if not stage_dir.is_dir():
            continue
        md += ["", f"## {record['name']}", ""]
        body.append(f"<h2>{html.escape(record['name'])}</h2>")
        made = [loss_curves(stage_dir, run / f".{record['name']}_curves.png"),
                pairs_sheet(stage_dir, run / f".{record['name']}_sheet.png")]
        for picture in [p for p in made if p] + _pictures(stage_dir):
            rel = picture.relative_to(run)
            md.append(f"![{rel}]({rel})")
            body.append(f'<figure><img src="{html.escape(str(rel))}"><figcaption>{html.escape(str(rel))}</figcaption></figure>')
        for path, table in _tables(stage_dir):
            md += ["", f"`{path.relative_to(run)}`", "", table.strip()]
            body.append(f"<p><code>{html.escape(str(path.relative_to(run)))}</code></p><pre>{html.escape(table.strip())}</pre>")
        artifacts = _artifacts(stage_dir)
        if artifacts:
            md += ["", "| artifact | bytes |", "|---|---|"] + [f"| {name} | {size:,} |" for name, size in artifacts]
            rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{s:,}</td></tr>" for n, s in artifacts)
            body.append(f"<table><tr><th>artifact</th><th>bytes</th></tr>{rows}</table>")
        verification = _verification(stage_dir)
        if verification:
            md += ["", "Verification:", "", verification]
            body.append(f"<h3>verification</h3><pre>{html.escape(verification)}</pre>")
    style = "body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}pre{background:#f4f4f4;padding:8px;overflow-x:auto}td,th{padding:2px 8px;text-align:left}"
    html_path, md_path = run / "report.html", run / "report.md"
    html_path.write_text(f"<!doctype html><meta charset=utf-8><title>DistilSwap report</title><style>{style}</style>" + "".join(body))
    md_path.write_text("\n".join(md) + "\n")
    return html_path, md_path


def _html_stage_table(records: list[dict]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(r['name'])}</td><td>{r.get('seconds', '')}</td><td><code>distilswap {html.escape(' '.join(r.get('argv', [])))}</code></td></tr>"
        for r in records
    )
    return f"<table><tr><th>stage</th><th>seconds</th><th>command</th></tr>{rows}</table>"
