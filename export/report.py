"""The benchmark's human-readable outputs: one summary sentence, a Markdown report, a chart."""
from __future__ import annotations

from pathlib import Path


def summary(report: dict) -> str:
    ratios, latency = report["ratios"], report["latency"]
    t = min(report["options"]["threads"])
    return (
        f"{ratios['peer_over_student_macs']:.0f}× fewer MACs and {ratios[f'peer_over_baked_{t}t']:.0f}× faster "
        f"(ONNX Runtime, {t} thread{'s' if t > 1 else ''}, p50 {latency[f'ort_baked_paired_with_peer_{t}t']['p50_ms']:.2f} ms vs "
        f"{latency[f'ort_peer_simswap_{t}t']['p50_ms']:.0f} ms) than a SimSwap-class generator on this machine"
    )


def _g(n: float) -> str:
    return f"{n / 1e9:.4f} G"


def write_markdown(report: dict, path: str | Path) -> Path:
    params, macs = report["params"], report["macs"]
    machine = report["machine"]
    lines = [f"# DistilSwap benchmark ({report['resolution']}², batch 1)", "", f"**{report['summary']}.**", "",
             f"{machine['cores']} CPU cores, onnxruntime {machine['onnxruntime']}, openvino {machine['openvino']}, "
             f"torch {machine['torch']}; load average "
             f"{machine['load_average_before']:.1f} before and {machine['load_average_after']:.1f} after (a load above the "
             "core count means other work shared the CPU: compare ratios, not absolute times).", ""]
    lines += ["## Parameters", "", "| network | parameters |", "|---|---:|"]
    lines += [f"| {name.replace('_', ' ')} | {value:,} |" for name, value in params.items()]
    lines += ["", f"## MACs ({macs['unit']})", "", "| network | fvcore | FlopCounterMode / 2 |", "|---|---:|---:|"]
    for name in ("student", "injector", "peer"):
        lines.append(f"| {name} | {_g(macs[name + '_fvcore'])} | {_g(macs[name + '_flop_counter'])} |")
    lines += ["", "## Top 10 layers of the per-frame network", "", "| layer | MACs | share |", "|---|---:|---:|"]
    lines += [f"| `{row['layer']}` | {row['macs'] / 1e6:.2f} M | {100 * row['macs'] / macs['student_fvcore']:.1f}% |"
              for row in report["top_layers"]]
    t = min(report["options"]["threads"])
    lines += ["", "## Next to other swappers (counted from each ONNX graph, batch 1)", "",
              f"| model | parameters | MACs | file MB | p50 ms, {t} thread(s) | vs the student |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in report["peers"].items():
        key = {"student (baked export)": "ort_baked", "SimSwap-class (built in)": "ort_peer_simswap"}.get(name, f"ort_{name}")
        ms = report["latency"].get(f"{key}_{t}t", {}).get("p50_ms")
        ratio = {"ort_baked": 1.0, "ort_peer_simswap": report["ratios"].get(f"peer_over_baked_{t}t")}.get(
            key, report["ratios"].get(f"{name}_over_baked_{t}t"))
        lines.append(f"| {name} | {row['params'] / 1e6:.2f} M | {row['macs'] / 1e9:.3f} G | {row['file_bytes'] / 1e6:.2f} | "
                     f"{'—' if ms is None else f'{ms:.2f}'} | {'—' if ratio is None else f'{ratio:.1f}×'} |")
    lines += ["", "The built-in SimSwap-class peer is SimSwap's 224² generator alone (Generator_Adain_Upsample, random "
              "weights); MobileFaceSwap's paper lists SimSwap at 107 M / 55.7 G, which likely counts more than the "
              "generator (its ArcFace, its discriminator or its 512² variant). MACs here count convolutions, matrix "
              "products, bilinear resizes and BatchNorm, as student/complexity.py counts the student."]
    lines += ["", "## Latency (ms)", "", "| measurement | p50 | p90 | p99 | runs |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {v['p50_ms']:.2f} | {v['p90_ms']:.2f} | {v['p99_ms']:.2f} | {v['runs']} |"
              for name, v in report["latency"].items()]
    lines += _profile_lines(report["kernel_profile"])
    lines += ["", "## Session creation (ms, median of 3)", "", "| graph | ms |", "|---|---:|"]
    lines += [f"| {name} | {ms:.1f} |" for name, ms in report["session_creation_ms"].items()]
    lines += ["", "## Ratios (same run)", "", "| ratio | value |", "|---|---:|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in report["ratios"].items()]
    lines += ["", "## File sizes", "", "| file | MB |", "|---|---:|"]
    lines += [f"| {name} | {size / 1e6:.3f} |" for name, size in report["file_bytes"].items()]
    lines += ["", "## Targets", "", "| target | measured | bound | met |", "|---|---:|---:|---|"]
    for name, row in report["targets"].items():
        value = "—" if row["value"] is None else f"{row['value']:.4g}"
        met = "not measured" if row["met"] is None else ("yes" if row["met"] else "NO")
        lines.append(f"| {name} | {value} | {row['target']:.4g} | {met} |")
    lines += ["", "The `.ort` file is prepared the way ONNX Runtime's converter prepares a phone model: every graph "
              "optimisation except the NCHWc layout transform, which blocks channels for this x86 CPU's vector width. "
              "Loading the `.onnx` here applies that transform, so on this desktop the `.ort` runs slower "
              "(`ort_format_over_onnx`); on a phone ORT Mobile's ARM kernels or the NNAPI / Core ML / XNNPACK execution "
              "providers run it, and it loads without an optimisation pass."]
    lines += ["", "`openvino_*` rows run the same `.onnx` files on OpenVINO's CPU plugin in fp32 (`distilswap swap "
              f"--engine openvino`); its outputs differ from PyTorch's by at most {report['openvino_max_abs_error']:.1e}. "
              "Its oneDNN kernels run the depthwise and 1×1 convolutions faster than ONNX Runtime's on x86, and with "
              "VNNI/AMX its int8 convolutions pay; ONNX Runtime stays the phone runtime, so its rows stay the reference."]
    if report.get("int8_mean_abs_error") is not None:
        lines += ["", "The int8 error is the mean absolute difference to fp32 PyTorch on crops held out from "
                  "calibration (see the int8 file's metadata); with a randomly initialised student it says little "
                  "about a trained one."]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def _profile_lines(profile: dict, top: int = 10) -> list[str]:
    lines = ["", "## Where the time goes (ONNX Runtime kernel profile: baked graph, 1 thread, median per node)", "",
             "| op | ms | share | nodes |", "|---|---:|---:|---:|"]
    lines += [f"| {row['op']} | {row['ms']:.2f} | {100 * row['share']:.1f}% | {row['nodes']} |" for row in profile["by_op"]]
    lines += ["", f"Its {top} costliest nodes (`_nchwc`: ORT's blocked-channel x86 layout, output channels padded to the "
              "block):", "", "| node | op | output shape | ms | share |", "|---|---|---|---:|---:|"]
    lines += [f"| `{row['node']}` | {row['op']} | {row['output_shape']} | {row['ms']:.3f} | {100 * row['share']:.1f}% |"
              for row in profile["nodes"][:top]]
    lines += ["", f"Kernel time in all: {profile['kernel_ms']:.2f} ms (the p50 above also counts the runtime's work "
              "between kernels). Every node and run: `kernel_profile.json` (open it in Perfetto or chrome://tracing)."]
    return lines


def write_chart(report: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    macs, latency = report["macs"], report["latency"]
    points = []
    for key, value in latency.items():
        if key.startswith("ort_peer_simswap"):
            points.append((f"SimSwap-class {key.rsplit('_', 1)[1]}", macs["peer_fvcore"], value["p50_ms"]))
        elif key.startswith(("ort_baked_", "ort_dynamic_", "ort_int8_", "openvino_", "torch_eager_baked_")) and "_with_" not in key \
                and "add_initializer" not in key:
            points.append((key.replace("ort_", "").replace("_", " "), macs["student_fvcore"], value["p50_ms"]))
    figure, axes = plt.subplots(figsize=(7, 5))
    for label, x, y in points:
        axes.scatter(x, y, s=30)
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(5, 3), fontsize=8)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("MACs per frame (log)")
    axes.set_ylabel("p50 latency, ms (log)")
    axes.set_title(f"Latency vs MACs at {report['resolution']}² (ONNX Runtime / OpenVINO / PyTorch, this CPU)")
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)
