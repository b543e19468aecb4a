"""`distilswap teacher ship`: a finished teacher run and the experts it was trained with → a `models/` folder.

Snapshots and experts are stored in fp16 (half the bytes; loaders cast back to fp32), with a manifest that
records what made them (the training config, steps, wall time, the world's data seed) and the sha256 of
every file, which `facekit.shipped.check_shipped` verifies before anything loads them.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from facekit.errors import UserError
from facekit.files import atomic_write, atomic_write_text, make_dir, read_json
from facekit.shipped import FORMAT, MANIFEST, file_sha256

from .checkpoint import read_metadata


def _half_copy(source: Path, destination: Path) -> None:
    """safetensors copy with floating tensors in fp16, metadata kept."""
    with safe_open(str(source), "pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    atomic_write(destination, lambda temp: save_file(tensors, str(temp), metadata=metadata))


def _wall_time(run: Path, final: Path) -> float:
    """Seconds of training: for each TensorBoard event file (one per session, named by its creation time), from
    its creation to its last write (the last session's to the final snapshot), so the time between a run and
    its `--extend` is not counted."""
    events = sorted(run.glob("tb/events.out.tfevents.*"), key=lambda p: float(p.name.split(".")[3]))
    if not events:
        return float("nan")
    ends = [p.stat().st_mtime for p in events[:-1]] + [max(final.stat().st_mtime, events[-1].stat().st_mtime)]
    return sum(end - float(p.name.split(".")[3]) for p, end in zip(events, ends))


def ship(run: str | Path, experts: str | Path, out: str | Path, commands: list[str], force: bool = False,
         steps: list[int] | None = None) -> Path:
    """Write out/{teacher/*.safetensors, experts/*, manifest.json}; refuses an unfinished run. `steps`: the
    snapshots to ship (default all; the final one always)."""
    run, experts, out = Path(run), Path(experts), Path(out)
    latest = run / "checkpoints" / "latest.json"
    state_files = sorted((run / "checkpoints").glob("step_*.state.pt"))
    if not latest.is_file() or not state_files:
        raise UserError(f"{run}: no training checkpoints; pass the --out of a `distilswap teacher train` run")
    state = torch.load(state_files[-1], map_location="cpu", weights_only=True)
    config = json.loads(state["config"])
    if int(state["step"]) < int(config["steps"]):
        raise UserError(f"{run} stopped at step {state['step']} of {config['steps']}; finish training first")
    snapshots = sorted((run / "snapshots").glob("step_*.safetensors"))
    if steps is not None:
        have = {int(p.stem[5:]): p for p in snapshots}
        missing = sorted(set(steps) - set(have))
        if missing:
            raise UserError(f"{run} has no snapshots at steps {missing}; it has {sorted(have)}")
        snapshots = [have[s] for s in sorted(set(steps) | {max(have)})]
    if experts.resolve() == (out / "experts").resolve():
        raise UserError(f"--experts {experts} is the folder that --out {out} replaces; ship from the folder the "
                        "experts were trained in (`distilswap experts train --out DIR`)")
    results = experts / "results.json"
    expert_results = read_json(results, f"rerun the `distilswap experts train` that made {experts}: it reuses the trained "
                               "experts and writes results.json again") if results.exists() else {}
    if (out / MANIFEST).exists() and not force:
        raise UserError(f"{out} already holds shipped models; pass --force to replace them")
    if (out / MANIFEST).exists():  # replacing: what the earlier manifest shipped goes, nothing else in out/
        earlier = read_json(out / MANIFEST, "restore it (it lists the files --force replaces), or ship into another --out")
        for name in earlier.get("files", {}):
            (out / name).unlink(missing_ok=True)
    make_dir(out / "teacher")
    make_dir(out / "experts")
    files = {}
    for snapshot in snapshots:
        _half_copy(snapshot, out / "teacher" / snapshot.name)
    for item in sorted(experts.iterdir()):
        if item.suffix == ".safetensors":
            _half_copy(item, out / "experts" / item.name)
        elif item.suffix in (".json", ".md"):
            shutil.copyfile(item, out / "experts" / item.name)
    for file in sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[file.relative_to(out).as_posix()] = {"sha256": file_sha256(file), "bytes": file.stat().st_size}
    manifest = {
        "format": FORMAT,
        "made_by": commands,
        "teacher": {"steps": int(state["step"]), "wall_time_s": round(_wall_time(run, snapshots[-1]), 1),
                    "data_seed": config["seed"], "data": config["data"], "config": config,
                    "snapshots": [{"file": f"teacher/{s.name}", **{k: read_metadata(s)[k] for k in ("step", "fraction")}}
                                  for s in snapshots]},
        "experts": expert_results,
        "precision": "fp16 (trained in fp32; the teacher was conditioned on the fp32 experts)",
        "files": files,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return out
