"""Where a graph's time goes in ONNX Runtime: a kernel profile per op type and per node.

The bench's latency says how long a frame takes; this says which kernels take it, in the graph ONNX Runtime
really runs (after its fusions and, on x86, its NCHWc layout: node names ending in `_nchwc` run blocked
channels). It is what to read before optimising, and the trace it keeps opens in Perfetto or chrome://tracing.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

KERNEL_SUFFIX = "_kernel_time"


def kernel_profile(model: Path, feeds: dict[str, np.ndarray], runs: int, warmup: int, trace_out: Path,
                   threads: int = 1) -> dict:
    """Run `model` warmup + runs times with ORT's profiler on (ORT_ENABLE_ALL, as the bench times it) and
    summarise the timed runs: median ms per node, totals per op type. The raw trace is copied to `trace_out`."""
    from facekit.onnx_runtime import ort_session, session_options

    with tempfile.TemporaryDirectory() as scratch:
        options = session_options("all", threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = ort_session(model, options=options)
        for _ in range(warmup + runs):
            session.run(None, feeds)
        trace = Path(session.end_profiling())
        shutil.copyfile(trace, trace_out)
    return summarise(json.loads(trace_out.read_text()), warmup)


def summarise(events: list[dict], warmup: int) -> dict:
    """Median kernel time of each node over the runs after `warmup` (each node runs once a run), then the
    op-type totals and every node by cost, with its output shape."""
    durations: dict[str, list[float]] = defaultdict(list)
    info: dict[str, dict] = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith(KERNEL_SUFFIX):
            continue
        name = event["name"][: -len(KERNEL_SUFFIX)]
        durations[name].append(event["dur"] / 1e3)
        args = event.get("args", {})
        shapes = [shape for output in args.get("output_type_shape", []) for shape in output.values()]
        info[name] = {"op": args.get("op_name", "?"), "output_shape": shapes[0] if shapes else None}
    nodes = [{"node": name, **info[name], "ms": float(np.median(times[warmup:] or times))}
             for name, times in durations.items()]
    total = sum(node["ms"] for node in nodes) or 1.0
    by_op: dict[str, dict] = {}
    for node in nodes:
        row = by_op.setdefault(node["op"], {"op": node["op"], "ms": 0.0, "nodes": 0})
        row["ms"] += node["ms"]
        row["nodes"] += 1
    for row in [*by_op.values(), *nodes]:
        row["share"] = row["ms"] / total
    return {"kernel_ms": total, "by_op": sorted(by_op.values(), key=lambda r: -r["ms"]),
            "nodes": sorted(nodes, key=lambda r: -r["ms"])}
