"""`distilswap export ...` and `distilswap bench`: phone-ready artifacts, verified, and their costs."""
from __future__ import annotations

import argparse

EXPORT_EXAMPLES = """\
examples:
  distilswap export --checkpoint runs/student.safetensors --source ids/alice.npz --out exports/alice
  distilswap export --checkpoint runs/student.safetensors --source ids/alice.npz --out exports/alice \\
      --formats onnx,ort,int8,coreml --calibration data/crops --force
  distilswap export verify exports/alice

The source is an identity file (.npz/.safetensors with `embedding` [512] and `feature_map` [512,7,7]) or a
face image with --embedder (the IR-SE ArcFace checkpoint: detect, align to 112², embed).
Files written: injector.onnx, swapper_dynamic.onnx, swapper_NAME.onnx (+ .ort, _int8.onnx,
.mlpackage, _palettized.mlpackage), reference.npz, manifest.json, verification.json, mac_check.py
(run it on a Mac to check the Core ML models numerically)."""

BENCH_EXAMPLES = """\
examples:
  distilswap bench --checkpoint runs/student.safetensors --out runs/bench
  distilswap bench --checkpoint runs/student.safetensors --out runs/bench --runs 300 --calibration data/crops

Writes bench.json, bench.md and bench.png (latency vs MACs, log scale) under --out."""


def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export",
        help="ONNX / ORT / int8 / Core ML artifacts of the student, verified",
        description="Export the student with one identity baked in (plus the identity-generic graphs), verify "
        "every artifact against PyTorch, and move the directory into place only if verification passes.",
        epilog=EXPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("--checkpoint", help="student checkpoint (.safetensors)")
    export.add_argument("--source", help="identity file (.npz / .safetensors: embedding + feature_map) or a face image")
    export.add_argument("--embedder", help="identity embedder for a face-image --source: IR-SE ArcFace checkpoint (.pdparams / .pth / .tar) or a small-experts folder")
    export.add_argument("--detector-models", help="insightface model folder for face detection (default: offline dlib)")
    export.add_argument("--out", help="output directory to create")
    export.add_argument("--formats", default="onnx,ort,coreml", help="comma list of onnx, ort, int8, coreml (default onnx,ort,coreml)")
    export.add_argument("--name", help="identity name used in file names and metadata (default: the source's file stem)")
    export.add_argument("--require", default="", metavar="FORMATS",
                        help="comma list of formats whose accuracy bound is fatal (e.g. int8); by default an int8 "
                        "file that misses its bound is left out, with its error and bound in the manifest")
    export.add_argument("--calibration", help="folder of real face crops to calibrate int8 on (needed for int8)")
    export.add_argument("--resolution", type=int, help="input size of the phone graphs (default: the checkpoint's)")
    export.add_argument("--force", action="store_true", help="replace an existing --out (after the new export verifies)")
    export.set_defaults(func=_export)
    actions = export.add_subparsers(dest="export_command", metavar="ACTION")
    verify = actions.add_parser(
        "verify",
        help="re-check an export directory",
        description="Re-open every artifact of an export directory: ONNX checker, ONNX Runtime vs the PyTorch "
        "reference outputs (≤1e-4 at ORT_ENABLE_BASIC, ENABLE_ALL reported), int8 error, Core ML structure.",
    )
    verify.add_argument("directory", help="directory written by `distilswap export`")
    verify.set_defaults(func=_verify)

    bench = subparsers.add_parser(
        "bench",
        help="parameters, MACs, latency and file sizes, with a SimSwap-class peer",
        description="Benchmark the student on this CPU: parameters, MACs (two counters), top layers, file sizes, "
        "ONNX Runtime latency (baked vs dynamic, 1 and 2 threads, int8), PyTorch eager, injector and "
        "session-creation times, and a SimSwap-class dense generator measured in the same run.",
        epilog=BENCH_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--checkpoint", required=True, help="student checkpoint (.safetensors)")
    bench.add_argument("--out", required=True, help="directory for bench.json / bench.md / bench.png and the exported models")
    bench.add_argument("--source", help="identity file to bake (default: a fixed random identity; speed does not depend on it)")
    bench.add_argument("--runs", type=int, default=200, help="timed runs per student measurement (default 200)")
    bench.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    bench.add_argument("--peer-runs", type=int, default=10, help="timed runs of the SimSwap-class peer (slow; default 10)")
    bench.add_argument("--threads", default="1,2", help="ONNX Runtime intra-op thread counts (default 1,2)")
    bench.add_argument("--calibration", help="face crops for the int8 variant (default: int8 is skipped)")
    bench.add_argument("--no-coreml", action="store_true", help="skip the Core ML file sizes")
    bench.add_argument("--peer", action="append", default=[], metavar="FILE.onnx",
                       help="another swapper's ONNX file (inswapper_128, SimSwap, HyperSwap ...): parameters, MACs "
                       "counted from its graph, file size and latency beside the student's; repeat for several")
    bench.add_argument("--peer-width", type=float, default=1.0, help=argparse.SUPPRESS)  # tiny peers for tests
    bench.add_argument("--force", action="store_true", help="reuse a non-empty --out")
    bench.set_defaults(func=_bench)


def _export(args: argparse.Namespace) -> int:
    from facekit.errors import UserError

    missing = [flag for flag in ("checkpoint", "source", "out") if not getattr(args, flag)]
    if missing:
        raise UserError(f"export needs {', '.join('--' + m for m in missing)} (see `distilswap export --help`)")
    from export.artifacts import export_artifacts, parse_formats

    result = export_artifacts(
        args.checkpoint, args.source, args.out, parse_formats(args.formats), args.name, args.force, args.calibration,
        args.resolution, args.embedder, args.detector_models, parse_formats(args.require) if args.require else (),
    )
    print(result.table())
    print(f"verified and wrote {args.out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from export.verify import MANIFEST, verify_export, write_report
    from facekit.errors import UserError

    if not (Path(args.directory) / MANIFEST).is_file():
        raise UserError(f"{args.directory}: no {MANIFEST}; pass a directory written by `distilswap export`")
    result = verify_export(args.directory)
    write_report(result, args.directory)
    print(result.table())
    print("all checks passed" if result.ok else f"{len(result.failures)} check(s) FAILED")
    return 0 if result.ok else 1


def _bench(args: argparse.Namespace) -> int:
    from export.bench import BenchOptions, run_bench

    options = BenchOptions.from_args(args)
    report = run_bench(options)
    print(report["summary"])
    print(f"wrote {args.out}/bench.json, bench.md, bench.png")
    return 0
