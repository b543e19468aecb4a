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
STAGE_CLIS = ("facekit.cli", "experts.cli", "teacher.cli", "student.cli", "distill.cli", "export.cli", "app.cli",
              "pipeline.cli")

DESCRIPTION = """\
Mobile-ready face-swap distillation. The stages, in the order data flows through them:
experts -> teacher -> pairs -> quality -> distill -> export -> bench / swap / evaluate.
`distilswap run --config configs/demo.yaml` runs them all on the synthetic face world (that is `make demo`).

Run `distilswap COMMAND --help` for each command's options."""


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors as the one line every other problem gets (subcommands inherit the class)."""

    def error(self, message: str):
        sys.exit(_error(f"{self.prog.removeprefix('distilswap ')}: {message} (see `{self.prog} --help`)"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="distilswap", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"distilswap {project_version()}")
    parser.add_argument("--verbose", action="store_true",
                        help="let third-party libraries print their progress (e.g. coremltools' conversion passes)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module_name in STAGE_CLIS:
        importlib.import_module(module_name).register(subparsers)
    return parser


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
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, --version, or a usage error already printed as one line
        return int(exit.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    import os

    from facekit.quiet import VERBOSE, configure_logging

    if args.verbose:
        os.environ[VERBOSE] = "1"
    configure_logging(bool(os.environ.get(VERBOSE)), {name.split(".")[0] for name in STAGE_CLIS})
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
