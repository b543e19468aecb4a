"""`distilswap run` and `distilswap report`."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
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
    run.set_defaults(func=_run)
    report = subparsers.add_parser(
        "report",
        help="write RUN/report.html and report.md over a `distilswap run` directory",
        description="Collect every stage's tables, pictures, loss curves and artifacts into one page.",
    )
    report.add_argument("run", help="the run directory")
    report.set_defaults(func=_report)


def _run(args: argparse.Namespace) -> int:
    from distilswap import main
    from pipeline.run import run_pipeline

    run_pipeline(args.config, args.out, args.from_stage, main)
    return 0


def _report(args: argparse.Namespace) -> int:
    from pipeline.report import write_report

    html_path, md_path = write_report(args.run)
    print(f"wrote {html_path} and {md_path}")
    return 0
