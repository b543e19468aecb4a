"""`distilswap run`: the stages of a pipeline YAML in order, each a plain distilswap command line (so the config
shows exactly what a user would type by hand), each finished stage cached by its command line and the contents
of the YAML files it names."""
from __future__ import annotations

import glob
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

from facekit.config import read_yaml_mapping
from facekit.errors import UserError
from facekit.files import atomic_write_text, read_json


def _expand(argv: list[str]) -> list[str]:
    """Shell-style globs (`snapshots/*.safetensors`), expanded when the stage starts, sorted."""
    expanded = []
    for arg in argv:
        matches = sorted(glob.glob(arg)) if any(c in arg for c in "*?[") else []
        expanded += matches or [arg]
    return expanded


def run_pipeline(config_path: str, out: str | None, from_stage: str | None, main: Callable[[list[str]], int]) -> Path:
    """Run each stage's command line through `main` (the distilswap CLI) unless it finished before with the same
    command and configs and its outputs are still there; a stage that ran reruns every later one."""
    config = read_yaml_mapping(config_path, "pipeline settings")
    if not isinstance(config.get("stages"), dict):
        raise UserError(f"{config_path}: expected a mapping with `stages:` (name: [distilswap arguments])")
    out = Path(out or config.get("out", "runs/pipeline"))
    stages: dict[str, list] = config.get("stages") or {}
    if from_stage and from_stage not in stages:
        raise UserError(f"--from-stage {from_stage}: not a stage of {config_path} ({', '.join(stages)})")
    done_dir = out / ".stages"
    done_dir.mkdir(parents=True, exist_ok=True)
    rerun = False
    for number, (name, argv) in enumerate(stages.items(), 1):
        argv = _expand([str(a).format(out=out) for a in argv])
        key = _stage_key(argv)
        marker = done_dir / f"{name}.json"
        rerun = rerun or name == from_stage
        if not rerun and _cached(marker, key):
            print(f"[{number}/{len(stages)}] {name}: cached ({marker})", flush=True)
            continue
        print(f"[{number}/{len(stages)}] {name}: distilswap {' '.join(argv)}", flush=True)
        start = time.monotonic()
        code = main(argv)
        if code:
            raise UserError(f"stage {name} failed (exit {code}); fix it and rerun: finished stages are kept")
        seconds = time.monotonic() - start
        outputs = sorted({a for a in argv if a.startswith(str(out)) and Path(a).exists()})
        atomic_write_text(marker, json.dumps({"key": key, "argv": argv, "seconds": round(seconds, 1),
                                              "order": number, "outputs": outputs}))
        print(f"[{number}/{len(stages)}] {name}: done in {seconds:.0f} s", flush=True)
        rerun = True  # a stage that ran invalidates the caches of the stages after it
    return out


def _cached(marker: Path, key: str) -> bool:
    """A finished stage with the same command line and configs whose outputs are all still there."""
    if not marker.is_file():
        return False
    record = read_json(marker, f"delete it and rerun: stage {marker.stem} runs again")
    return record.get("key") == key and all(Path(p).exists() for p in record.get("outputs", []))


def _stage_key(argv: list[str]) -> str:
    """The command line plus the contents of the YAML files it names: editing a config reruns its stage."""
    digest = hashlib.sha256(json.dumps(argv).encode())
    for arg in argv:
        path = Path(arg)
        if path.suffix in (".yaml", ".yml") and path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()
