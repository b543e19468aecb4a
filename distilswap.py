"""The `distilswap` command: one subcommand per pipeline stage.

Each stage package owns its subcommands in its own `cli.py` (a `register(subparsers)` function that
imports nothing heavy), so `distilswap --help` is instant and stages stay independent.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from export.metadata import project_version

# In data-flow order; `--help` lists subcommands in this order.
STAGE_CLIS = ("facekit.cli", "experts.cli", "teacher.cli", "student.cli", "distill.cli", "export.cli", "app.cli")

DESCRIPTION = """\
Mobile-ready face-swap distillation.

  experts   train/inspect the frozen face experts (identity, parser, gaze)
  world     the synthetic face world: previews, data sets, ground-truth swap sheets
  identity  a source identity file (embedding + 7x7 map) from a photo or a data set sample
  teacher   train the DiffFace teacher, sample guided swaps
  pairs     write the teacher's paired swaps as shards
  quality   train the quality regressor and score pairs
  student   build / import (official MobileFaceSwap weights) / bake / inspect the student
  distill   distil the student from scored pairs
  export    ONNX, ORT, Core ML artifacts, with verification
  bench     parameters, MACs, latency, peers side by side
  swap      swap faces in photos and videos
  run       the whole pipeline from a YAML config (make demo = run --config configs/demo.yaml)
  report    the HTML/Markdown report of a run

Run `distilswap COMMAND --help` for each command's options."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distilswap", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"distilswap {project_version()}")
    parser.add_argument("--verbose", action="store_true",
                        help="let third-party libraries print their progress (e.g. coremltools' conversion passes)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in STAGE_CLIS:
        importlib.import_module(module_name).register(subparsers)
    run = subparsers.add_parser(
        "run",
        help="run the whole pipeline from a YAML config, each finished stage cached",
        description="Run the stages listed in a YAML config in order (each is a distilswap command line), skip "
        "the ones already finished with the same command, then write the report. Interrupt it at any time: a "
        "rerun resumes. Example:\n  distilswap run --config configs/demo.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--config", required=True, help="pipeline YAML (see configs/demo.yaml)")
    run.add_argument("--out", help="output directory (default: the config's `out`)")
    run.add_argument("--from-stage", help="rerun this stage and every later one")
    run.set_defaults(func=_run_pipeline)
    report = subparsers.add_parser(
        "report",
        help="write RUN/report.html and report.md over a `distilswap run` directory",
        description="Collect every stage's tables, pictures, loss curves and artifacts into one page.",
    )
    report.add_argument("run", help="the run directory")
    report.set_defaults(func=_write_report)
    return parser


def _expand(argv: list[str]) -> list[str]:
    """Shell-style globs (`snapshots/*.safetensors`), expanded when the stage starts, sorted."""
    import glob

    expanded = []
    for arg in argv:
        matches = sorted(glob.glob(arg)) if any(c in arg for c in "*?[") else []
        expanded += matches or [arg]
    return expanded


def _write_report(args: argparse.Namespace) -> int:
    from export.run_report import write_report

    html_path, md_path = write_report(args.run)
    print(f"wrote {html_path} and {md_path}")
    return 0


def _run_pipeline(args: argparse.Namespace) -> int:
    """Stages are plain command lines so the config shows exactly what a user would type by hand."""
    import json
    import time
    from pathlib import Path

    from facekit.config import read_yaml_mapping
    from facekit.errors import UserError

    config = read_yaml_mapping(args.config, "pipeline settings")
    if not isinstance(config.get("stages"), dict):
        raise UserError(f"{args.config}: expected a mapping with `stages:` (name: [distilswap arguments])")
    out = Path(args.out or config.get("out", "runs/pipeline"))
    stages: dict[str, list] = config.get("stages") or {}
    if args.from_stage and args.from_stage not in stages:
        raise UserError(f"--from-stage {args.from_stage}: not a stage of {args.config} ({', '.join(stages)})")
    done_dir = out / ".stages"
    done_dir.mkdir(parents=True, exist_ok=True)
    rerun = False
    for number, (name, argv) in enumerate(stages.items(), 1):
        argv = _expand([str(a).format(out=out) for a in argv])
        key = _stage_key(argv)
        marker = done_dir / f"{name}.json"
        rerun = rerun or name == args.from_stage
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
        marker.write_text(json.dumps({"key": key, "argv": argv, "seconds": round(seconds, 1), "order": number,
                                      "outputs": outputs}))
        print(f"[{number}/{len(stages)}] {name}: done in {seconds:.0f} s", flush=True)
        rerun = True  # a stage that ran invalidates the caches of the stages after it
    return 0


def _cached(marker, key: str) -> bool:
    """A finished stage with the same command line and configs whose outputs are all still there."""
    import json
    from pathlib import Path

    if not marker.is_file():
        return False
    record = json.loads(marker.read_text())
    return record.get("key") == key and all(Path(p).exists() for p in record.get("outputs", []))


def _stage_key(argv: list[str]) -> str:
    """The command line plus the contents of the YAML files it names: editing a config reruns its stage."""
    import hashlib
    import json
    from pathlib import Path

    digest = hashlib.sha256(json.dumps(argv).encode())
    for arg in argv:
        path = Path(arg)
        if path.suffix in (".yaml", ".yml") and path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _error(message: str) -> int:
    """The one line a user sees for a problem they can fix."""
    print(f"distilswap: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _os_problem(err: OSError) -> str:
    import errno

    where = err.filename or "the output"
    if err.errno == errno.ENOSPC:
        return f"no space left on the device writing {where}; free space and rerun (finished work is kept)"
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"{where}: a file is in the way (an output folder cannot be created there); choose another path"
    return f"{where}: {err.strerror or err}"


def main(argv: Sequence[str] | None = None) -> int:
    from facekit.errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if args.verbose:
        import os

        from facekit.quiet import VERBOSE

        os.environ[VERBOSE] = "1"
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        return _error(str(err))
    except OSError as err:  # an output under a file, read-only, a full disk: one line naming the path
        if args.verbose:
            raise
        return _error(_os_problem(err))
    except KeyboardInterrupt:
        print("distilswap: interrupted (completed work is kept; rerun to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
