"""The `distilswap` command: one subcommand per pipeline stage.

Each stage package owns its subcommands in its own `cli.py` (a `register(subparsers)` function that
imports nothing heavy), so `distilswap --help` is instant and stages stay independent.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# In data-flow order; `--help` lists subcommands in this order.
STAGE_CLIS = ("facekit.cli", "teacher.cli", "student.cli", "distill.cli", "export.cli")

DESCRIPTION = """\
Mobile-ready face-swap distillation.

  experts   train/inspect the frozen face experts (identity, parser, gaze)
  teacher   train the DiffFace teacher, sample guided swaps
  pairs     write the teacher's paired swaps as shards
  quality   train the quality regressor and score pairs
  student   build / import (official MobileFaceSwap weights) / bake / inspect the student
  distill   distil the student from scored pairs
  export    ONNX, ORT, Core ML artifacts, with verification
  bench     parameters, MACs, latency, peers side by side
  swap      swap faces in photos and videos

Run `distilswap COMMAND --help` for each command's options."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distilswap", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"distilswap {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in STAGE_CLIS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:  # a stage package without a CLI yet
            if err.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("distilswap")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    from facekit.errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"distilswap: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distilswap: interrupted (completed work is kept; rerun to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
