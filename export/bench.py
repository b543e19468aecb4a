"""`distilswap bench`: what the student costs on this CPU, next to a SimSwap-class dense generator.

Absolute times on shared machines drift, so every number that matters is also given as a ratio
measured in the same run (dynamic vs baked, int8 vs fp32, OpenVINO vs ONNX Runtime, peer vs student).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from export import layout
from facekit.errors import UserError
from facekit.timing import time_rounds

BENCH_NAME = "bench"  # the identity name of the bench's own export
RANDOM_IDENTITY_SEED = 0
SESSION_REPEATS = 3
PROFILE_RUNS = 50  # profiled runs of the baked graph (fewer when --runs is smaller)
TARGETS = {
    "baked_p50_ms_1_thread": 12.0,
    "openvino_baked_p50_ms_1_thread": 10.0,
    "openvino_max_abs_error": 1e-4,
    "dynamic_over_baked": 2.2,
    "coreml_palettized_mb": 0.4,
    "int8_onnx_mb": 0.7,
    "int8_mean_abs_error": 2 / 255,
}


@dataclass
class BenchOptions:
    checkpoint: str
    out: str
    source: str | None = None
    runs: int = 200
    warmup: int = 10
    peer_runs: int = 10
    threads: tuple[int, ...] = (1, 2)
    calibration: str | None = None
    coreml: bool = True
    peer_width: float = 1.0
    force: bool = False
    peers: tuple[str, ...] = ()  # other swappers' ONNX files

    @classmethod
    def from_args(cls, args) -> "BenchOptions":
        try:
            threads = tuple(int(t) for t in args.threads.split(",") if t.strip())
        except ValueError:
            threads = ()
        if not threads or min(threads) < 1:
            raise UserError(f"--threads must list positive integers like 1,2, got {args.threads!r}")
        if args.runs < 1 or args.peer_runs < 1 or args.warmup < 0:
            raise UserError("--runs and --peer-runs must be ≥ 1 and --warmup ≥ 0")
        for peer in args.peer:
            if not Path(peer).is_file() or Path(peer).suffix.lower() != ".onnx":
                raise UserError(f"--peer {peer}: no such ONNX file")
        return cls(args.checkpoint, args.out, args.source, args.runs, args.warmup, args.peer_runs, threads,
                   args.calibration, not args.no_coreml, args.peer_width, args.force, tuple(args.peer))


def percentiles(times_s: list[float]) -> dict[str, float]:
    ms = np.asarray(times_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "runs": int(len(ms))}


def time_interleaved(calls: dict[str, Callable[[], object]], runs: int, warmup: int, label: str) -> dict[str, dict]:
    """Percentiles of each call over `runs` interleaved rounds (facekit.timing)."""
    _, times = time_rounds(calls, runs, warmup, label)
    return {name: percentiles(values) for name, values in times.items()}


def session_creation_ms(make: Callable[[], object]) -> float:
    _, times = time_rounds({"make": make}, SESSION_REPEATS, warmup=0)
    return float(np.median(times["make"]) * 1e3)


def file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


@dataclass
class _Subject:
    """What one bench run measures: the student, its baked network, the identity and the inputs."""

    model: torch.nn.Module
    net: torch.nn.Module
    embedding: torch.Tensor
    feature_map: torch.Tensor
    source: Path  # the identity file the export bakes
    target: torch.Tensor
    peer: torch.nn.Module
    latent: torch.Tensor


def run_bench(options: BenchOptions) -> dict:
    from export.report import write_chart, write_markdown, summary

    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; --out must be a directory")
    if out.exists() and any(out.iterdir()) and not options.force:
        raise UserError(f"{out} is not empty; pass --force to bench into it again")
    subject = _subject(options, out)
    report: dict = {"resolution": subject.model.config.resolution, "checkpoint": str(options.checkpoint),
                    "options": asdict(options), "machine": _machine()}
    report.update(_counts(subject))
    artifacts_dir, peer_path, formats = _artifacts(options, subject, out, report)
    report["peers"] = _peer_counts(options, subject, artifacts_dir, peer_path)
    report["latency"] = _latency(options, subject, artifacts_dir, peer_path, formats)
    report["session_creation_ms"] = _session_creation(subject, artifacts_dir, peer_path)
    report["kernel_profile"] = _kernel_profile(options, subject, artifacts_dir, out)
    report["machine"]["load_average_after"] = os.getloadavg()[0]
    report["ratios"] = _ratios(report, options.threads)
    report["targets"] = _targets(report)
    report["summary"] = summary(report)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    write_markdown(report, out / "bench.md")
    write_chart(report, out / "bench.png")
    return report


def _subject(options: BenchOptions, out: Path) -> _Subject:
    """The student, an identity to bake (speed does not depend on it: random unless --source) and inputs."""
    from export.peers import SimSwapGenerator
    from facekit.identity import resolve_identity, save_identity
    from student.checkpoint import load_student

    model = load_student(options.checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    r, d = model.config.resolution, model.config.identity_dim
    if options.source:
        source = Path(options.source)
        _, embedding, feature_map = resolve_identity(source, dim=d)
    else:
        generator = torch.Generator().manual_seed(RANDOM_IDENTITY_SEED)
        embedding = torch.nn.functional.normalize(torch.randn(1, d, generator=generator), dim=1)
        feature_map = torch.randn(1, d, 7, 7, generator=generator)
        source = save_identity(out / "random_identity.npz", embedding, feature_map)
    target = torch.rand(1, 3, r, r, generator=torch.Generator().manual_seed(1))
    latent = torch.nn.functional.normalize(torch.randn(1, 512), dim=1)
    return _Subject(model, model.bake(embedding, feature_map), embedding, feature_map, source, target,
                    SimSwapGenerator(options.peer_width).eval(), latent)


def _counts(subject: _Subject) -> dict:
    """Parameters and MACs (two counters) of the student, its injector and the peer; the top layers."""
    from export.onnx_export import Injector
    from student.complexity import count_macs, count_params, top_layers
    from student.idn import identity_weight_shapes

    shapes = identity_weight_shapes(subject.model.config)
    macs = count_macs(subject.net, (subject.target,))
    injector_macs = count_macs(Injector(subject.model), (subject.embedding, subject.feature_map))
    peer_macs = count_macs(subject.peer, (subject.target, subject.latent))
    return {
        "params": {
            "static_network": count_params(subject.net),
            "static_network_with_bn_stats": count_params(subject.net, include_buffers=True),
            "injector": count_params(subject.model),
            "per_identity_weights": int(sum(int(np.prod(s)) for s in shapes.values())),
            "peer_simswap": count_params(subject.peer),
        },
        "macs": {
            "unit": "multiply-accumulates per frame (FLOPs = 2 × MACs)",
            "student_fvcore": macs.fvcore_macs, "student_flop_counter": macs.flop_counter_macs,
            "injector_fvcore": injector_macs.fvcore_macs, "injector_flop_counter": injector_macs.flop_counter_macs,
            "peer_fvcore": peer_macs.fvcore_macs, "peer_flop_counter": peer_macs.flop_counter_macs,
            "student_flops": macs.flops,
        },
        "top_layers": [{"layer": name, "macs": n} for name, n in top_layers(macs, 10)],
    }


def _artifacts(options: BenchOptions, subject: _Subject, out: Path, report: dict) -> tuple[Path, Path, tuple[str, ...]]:
    """The verified export and the peer graph; file sizes, OpenVINO's error and the int8 error go into the report.
    Returns the artifacts folder, the peer file and the formats to time (an int8 file that missed its bound is
    not)."""
    from export.artifacts import export_artifacts
    from export.onnx_export import export_graph
    from export.verify import OPENVINO_CHECK

    formats = ("onnx", "ort", *(("int8",) if options.calibration else ()), *(("coreml",) if options.coreml else ()))
    artifacts_dir = out / "artifacts"
    verification = export_artifacts(options.checkpoint, subject.source, artifacts_dir, formats, name=BENCH_NAME,
                                    force=True, calibration=options.calibration)
    peer_path = export_graph(subject.peer, (subject.target, subject.latent), out / "peer_simswap.onnx",
                             ("target", "latent"), ("image",),
                             {"artifact": "peer", "architecture": "SimSwap Generator_Adain_Upsample (random weights)"})
    files = {p.name: p for p in artifacts_dir.iterdir() if p.suffix in (".onnx", ".ort", ".mlpackage")}
    files[peer_path.name] = peer_path
    report["file_bytes"] = {name: file_size(path) for name, path in sorted(files.items())}
    report["openvino_max_abs_error"] = next(c.value for c in verification.checks if c.check == OPENVINO_CHECK)
    int8_check = next((c for c in verification.checks if c.check.startswith("int8 mean abs")), None)
    int8_skipped = verification.skipped.get(layout.int8(BENCH_NAME))
    report["int8_mean_abs_error"] = (int8_check.value if int8_check else int8_skipped["value"] if int8_skipped else None)
    if int8_skipped:
        formats = tuple(f for f in formats if f != "int8")  # missed its bound: measured, not timed
    return artifacts_dir, peer_path, formats


def _latency(options: BenchOptions, subject: _Subject, artifacts_dir: Path, peer_path: Path,
             formats: tuple[str, ...]) -> dict[str, dict]:
    """Every graph at every thread count, interleaved in rounds so all see the same machine load; the peer in
    rounds of its own, paired with the baked student."""
    from export.onnx_export import identity_session, run_swapper
    from facekit.onnx_runtime import ort_session

    x = subject.target.numpy()
    weights = _identity_weights(subject)
    baked, dynamic = artifacts_dir / layout.baked(BENCH_NAME), artifacts_dir / layout.DYNAMIC
    feeds = {"embedding": subject.embedding.numpy(), "feature_map": subject.feature_map.numpy()}
    latency: dict[str, dict] = {}
    for threads in tqdm(options.threads, desc="bench threads", unit="setting"):
        t = f"{threads}t"
        sessions = {
            "baked": ort_session(baked, "all", threads),
            "dynamic": ort_session(dynamic, "all", threads),
            "baked_add_initializer": identity_session(baked, weights, "all", threads),
            "ort_format": ort_session(artifacts_dir / layout.ort(BENCH_NAME), "disable", threads),
        }
        if "int8" in formats:
            sessions["int8"] = ort_session(artifacts_dir / layout.int8(BENCH_NAME), "all", threads)
        calls = {f"ort_{name}_{t}": (lambda s=session, w=weights if name == "dynamic" else None: run_swapper(s, x, w))
                 for name, session in sessions.items()}
        for name, session in _openvino_sessions(artifacts_dir, formats, threads).items():
            calls[f"openvino_{name}_{t}"] = lambda s=session: run_swapper(s, x)
        injector = ort_session(artifacts_dir / layout.INJECTOR, "all", threads)
        calls[f"ort_injector_{t}"] = lambda: injector.run(None, feeds)
        calls[f"torch_eager_baked_{t}"] = lambda: subject.net(subject.target)
        calls[f"torch_eager_injector_{t}"] = lambda: subject.model.identity_weights(subject.embedding, subject.feature_map)
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        with torch.no_grad():
            latency.update(time_interleaved(calls, options.runs, options.warmup, f"student {t}"))
        torch.set_num_threads(torch_threads)
        peer_session = ort_session(peer_path, "all", threads)
        peer_feeds = {"target": x, "latent": subject.latent.numpy()}
        paired = {f"ort_peer_simswap_{t}": lambda: peer_session.run(None, peer_feeds),  # the baked student runs in the same rounds,
                  f"ort_baked_paired_with_peer_{t}": calls[f"ort_baked_{t}"]}  # so both see the same load
        latency.update(time_interleaved(paired, options.peer_runs, min(options.warmup, 2), f"SimSwap-class {t}"))
        for peer in options.peers:
            session = ort_session(peer, "all", threads)
            peer_inputs = _random_feeds(session)
            paired = {f"ort_{Path(peer).stem}_{t}": lambda s=session, f=peer_inputs: s.run(None, f),
                      f"ort_baked_paired_with_{Path(peer).stem}_{t}": calls[f"ort_baked_{t}"]}
            latency.update(time_interleaved(paired, options.peer_runs, min(options.warmup, 2), f"{Path(peer).stem} {t}"))
    return latency


def _openvino_sessions(artifacts_dir: Path, formats: tuple[str, ...], threads: int) -> dict[str, object]:
    """The baked file (and the int8 one) on OpenVINO, the app's other engine (`swap --engine openvino`)."""
    from facekit.openvino_session import OpenVinoSession

    files = {"baked": layout.baked(BENCH_NAME), **({"int8": layout.int8(BENCH_NAME)} if "int8" in formats else {})}
    return {name: OpenVinoSession(artifacts_dir / file, threads) for name, file in files.items()}


def _random_feeds(session) -> dict[str, np.ndarray]:
    """Inputs for a foreign graph: its declared shapes (free dimensions = 1), values in [0, 1)."""
    generator = np.random.default_rng(0)
    feeds = {}
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in value.shape]
        if "float" not in value.type:
            raise UserError(f"peer input {value.name!r} is {value.type}: only float inputs can be fed random data")
        feeds[value.name] = generator.random(shape, dtype=np.float32)
    return feeds


def _peer_counts(options: BenchOptions, subject: _Subject, artifacts_dir: Path, peer_path: Path) -> dict[str, dict]:
    """Parameters and MACs counted from each graph (export/onnx_macs.py), the student's own export and the
    built-in SimSwap-class generator included, so the counter is checked against the torch counters."""
    from export.onnx_macs import onnx_counts

    graphs = {"student (baked export)": artifacts_dir / layout.baked(BENCH_NAME), "SimSwap-class (built in)": peer_path,
              **{Path(p).stem: Path(p) for p in options.peers}}
    return {name: {**onnx_counts(path), "file_bytes": file_size(path)} for name, path in graphs.items()}


def _identity_weights(subject: _Subject) -> dict[str, np.ndarray]:
    """The 18 identity conv weights the injector makes for the bench identity (inputs of the dynamic graph)."""
    with torch.no_grad():
        return {k: v[0].numpy() for k, v in subject.model.identity_weights(subject.embedding, subject.feature_map).items()}


def _kernel_profile(options: BenchOptions, subject: _Subject, artifacts_dir: Path, out: Path) -> dict:
    """The baked graph's kernels on one thread: what its latency above is made of (trace kept for Perfetto)."""
    from export.kernel_profile import kernel_profile

    return kernel_profile(artifacts_dir / layout.baked(BENCH_NAME), {"target": subject.target.numpy()},
                          min(options.runs, PROFILE_RUNS), options.warmup, out / "kernel_profile.json")


def _session_creation(subject: _Subject, artifacts_dir: Path, peer_path: Path) -> dict[str, float]:
    """How long a phone app waits before its first frame, per graph (1 thread)."""
    from export.onnx_export import identity_session
    from facekit.onnx_runtime import ort_session
    from facekit.openvino_session import OpenVinoSession

    baked, dynamic = artifacts_dir / layout.baked(BENCH_NAME), artifacts_dir / layout.DYNAMIC
    weights = _identity_weights(subject)
    return {
        "baked": session_creation_ms(lambda: ort_session(baked, "all", 1)),
        "dynamic": session_creation_ms(lambda: ort_session(dynamic, "all", 1)),
        "ort_format": session_creation_ms(lambda: ort_session(artifacts_dir / layout.ort(BENCH_NAME), "disable", 1)),
        "baked_add_initializer": session_creation_ms(lambda: identity_session(baked, weights, "all", 1)),
        "peer_simswap": session_creation_ms(lambda: ort_session(peer_path, "all", 1)),
        "openvino_baked": session_creation_ms(lambda: OpenVinoSession(baked, 1)),
    }


def _machine() -> dict:
    """Shared machines: the load while measuring says how much to trust absolute times."""
    import platform

    import onnxruntime
    import openvino

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
            "openvino": openvino.__version__.split("-")[0], "torch": torch.__version__, "load_average_before": os.getloadavg()[0]}


def _ratios(report: dict, threads: tuple[int, ...]) -> dict[str, float]:
    latency, macs = report["latency"], report["macs"]
    ratios = {"peer_over_student_macs": macs["peer_fvcore"] / macs["student_fvcore"],
              "peer_over_student_params": report["params"]["peer_simswap"] / report["params"]["static_network"]}
    for t in threads:
        p50 = lambda name: latency[f"{name}_{t}t"]["p50_ms"]  # noqa: E731
        ratios[f"dynamic_over_baked_{t}t"] = p50("ort_dynamic") / p50("ort_baked")
        ratios[f"add_initializer_over_baked_{t}t"] = p50("ort_baked_add_initializer") / p50("ort_baked")
        ratios[f"peer_over_baked_{t}t"] = p50("ort_peer_simswap") / p50("ort_baked_paired_with_peer")
        ratios[f"torch_eager_over_ort_baked_{t}t"] = p50("torch_eager_baked") / p50("ort_baked")
        if f"ort_ort_format_{t}t" in latency:
            ratios[f"ort_format_over_onnx_{t}t"] = p50("ort_ort_format") / p50("ort_baked")
        if f"ort_int8_{t}t" in latency:
            ratios[f"int8_over_fp32_{t}t"] = p50("ort_int8") / p50("ort_baked")
        ratios[f"openvino_over_ort_baked_{t}t"] = p50("openvino_baked") / p50("ort_baked")
        if f"openvino_int8_{t}t" in latency:
            ratios[f"openvino_int8_over_openvino_fp32_{t}t"] = p50("openvino_int8") / p50("openvino_baked")
            ratios[f"openvino_int8_over_ort_fp32_{t}t"] = p50("openvino_int8") / p50("ort_baked")
        for peer in report["options"]["peers"]:
            name = Path(peer).stem
            ratios[f"{name}_over_baked_{t}t"] = p50(f"ort_{name}") / p50(f"ort_baked_paired_with_{name}")
    return ratios


def _targets(report: dict) -> dict[str, dict]:
    """The issue's targets, measured; `met` is None where this run did not measure the quantity."""
    sizes, latency, ratios = report["file_bytes"], report["latency"], report["ratios"]
    measured = {
        "baked_p50_ms_1_thread": latency.get("ort_baked_1t", {}).get("p50_ms"),
        "openvino_baked_p50_ms_1_thread": latency.get("openvino_baked_1t", {}).get("p50_ms"),
        "openvino_max_abs_error": report.get("openvino_max_abs_error"),
        "dynamic_over_baked": ratios.get("dynamic_over_baked_1t"),
        "coreml_palettized_mb": sizes.get(layout.coreml(BENCH_NAME, palettized=True), None),
        "int8_onnx_mb": sizes.get(layout.int8(BENCH_NAME), None),
        "int8_mean_abs_error": report.get("int8_mean_abs_error"),
    }
    for key in ("coreml_palettized_mb", "int8_onnx_mb"):
        if measured[key] is not None:
            measured[key] = measured[key] / 1e6
    return {key: {"value": value, "target": TARGETS[key], "met": None if value is None else value <= TARGETS[key]}
            for key, value in measured.items()}
