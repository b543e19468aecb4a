"""`distilswap bench` end to end on a tiny student and a tiny SimSwap-class peer (no timing assertions)."""
import ctypes
import dataclasses
import json
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import distilswap
from export.peers import SimSwapGenerator
from student.checkpoint import save_student
from student.complexity import count_macs, count_params
from student.config import StudentConfig, scaled
from student.model import MobileFaceSwap


def test_simswap_class_peer_has_the_published_size():
    """Counted without running it at 224²: 9 AdaIN blocks at 28², 512 channels (SimSwap's 224 generator)."""
    peer = SimSwapGenerator()
    assert 54e6 < count_params(peer) < 56e6
    small = SimSwapGenerator(width=0.125, blocks=2).eval()
    macs = count_macs(small, (torch.rand(1, 3, 64, 64), torch.randn(1, 512)))
    assert macs.fvcore_macs == macs.flop_counter_macs > 0
    out = small(torch.rand(2, 3, 64, 64), torch.randn(2, 512))
    assert out.shape == (2, 3, 64, 64) and 0 <= out.min() and out.max() <= 1


def test_bench_writes_json_markdown_and_chart(tmp_path, capsys):
    torch.manual_seed(0)
    config = dataclasses.replace(scaled(StudentConfig(resolution=64), 0.25), identity_dim=64)  # small injector: quick
    save_student(MobileFaceSwap(config), tmp_path / "student.safetensors")
    (tmp_path / "crops").mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "crops" / f"{i}.png")
    from test_teacher_pairs import tiny_onnx_swapper

    tiny_onnx_swapper(tmp_path / "inswapper_like.onnx")  # another project's swapper, as a --peer
    out = tmp_path / "bench"
    argv = ["bench", "--checkpoint", str(tmp_path / "student.safetensors"), "--out", str(out), "--runs", "2",
            "--warmup", "1", "--peer-runs", "1", "--threads", "1", "--peer-width", "0.0625", "--no-coreml",
            "--calibration", str(tmp_path / "crops"), "--peer", str(tmp_path / "inswapper_like.onnx")]
    assert distilswap.main(argv) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["macs"]["student_fvcore"] == report["macs"]["student_flop_counter"] > 0
    assert report["params"]["per_identity_weights"] > 0 and len(report["top_layers"]) == 10
    for key in ("ort_baked_1t", "ort_dynamic_1t", "ort_baked_add_initializer_1t", "ort_int8_1t", "ort_injector_1t",
                "ort_peer_simswap_1t", "torch_eager_baked_1t", "openvino_baked_1t", "openvino_int8_1t"):
        assert report["latency"][key]["p50_ms"] > 0
    # the other engine runs the same file to PyTorch's numbers, and is timed in the same rounds
    assert report["targets"]["openvino_max_abs_error"]["met"] and report["openvino_max_abs_error"] < 1e-4
    assert {"openvino_over_ort_baked_1t", "openvino_int8_over_openvino_fp32_1t"} <= set(report["ratios"])
    assert {"swapper_bench.onnx", "swapper_bench_int8.onnx", "swapper_bench.ort", "peer_simswap.onnx"} <= set(report["file_bytes"])
    assert report["targets"]["coreml_palettized_mb"]["met"] is None  # not measured in this run, not claimed
    # MACs counted from the ONNX graphs agree with the torch counters (BatchNorm is folded in the export)
    peers = report["peers"]
    assert abs(peers["student (baked export)"]["macs"] / report["macs"]["student_flop_counter"] - 1) < 0.02
    assert abs(peers["SimSwap-class (built in)"]["macs"] / report["macs"]["peer_flop_counter"] - 1) < 0.02
    assert peers["inswapper_like"]["params"] == 512 * 3 + 512 * 512 + 1 and peers["inswapper_like"]["macs"] == 512 * 3
    assert report["latency"]["ort_inswapper_like_1t"]["p50_ms"] > 0 and "inswapper_like_over_baked_1t" in report["ratios"]
    assert report["ratios"]["ort_format_over_onnx_1t"] > 0
    markdown = (out / "bench.md").read_text()
    assert "fewer MACs" in markdown and "| ort_baked_1t |" in markdown and "| inswapper_like |" in markdown
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    profile = report["kernel_profile"]  # the baked graph's kernels, from ORT's own profiler
    assert "Conv" in {row["op"] for row in profile["by_op"]} and profile["nodes"][0]["ms"] > 0
    assert abs(sum(row["share"] for row in profile["by_op"]) - 1) < 1e-6
    assert any(event.get("cat") == "Node" for event in json.loads((out / "kernel_profile.json").read_text()))
    assert "## Where the time goes" in markdown and f"`{profile['nodes'][0]['node']}`" in markdown
    assert "than a SimSwap-class generator" in capsys.readouterr().out
    assert distilswap.main(argv) == 2  # a finished bench is not overwritten without --force
    # OpenVINO's CPU plugin gives the thread a signal stack; it must outlive the bench's sessions, or the next
    # Ctrl-C (Python's handlers run on that stack) crashes the process instead of stopping it
    assert _signal_stack_is_usable()
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # run in the background, SIGINT is ignored
    try:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, before)


def _signal_stack_is_usable() -> bool:
    """This thread's alternate signal stack is off, or lies in mapped memory (Linux)."""
    libc = ctypes.CDLL(None)

    class Stack(ctypes.Structure):
        _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

    stack = Stack()
    assert libc.sigaltstack(None, ctypes.byref(stack)) == 0
    if stack.flags & 2:  # SS_DISABLE
        return True
    ranges = (line.split()[0].split("-") for line in open("/proc/self/maps"))
    return any(int(low, 16) <= stack.sp and stack.sp + stack.size <= int(high, 16) for low, high in ranges)


def test_kernel_profile_takes_medians_after_warmup_and_totals_per_op():
    from export.kernel_profile import summarise

    def kernel(name, op, ms, shape):
        return {"cat": "Node", "name": f"{name}_kernel_time", "dur": ms * 1e3,
                "args": {"op_name": op, "output_type_shape": [{"float": shape}]}}

    events = [{"cat": "Session", "name": "model_run", "dur": 1}]
    for run, (a, b, c) in enumerate([(90.0, 9.0, 9.0), (3.0, 1.0, 1.0), (5.0, 1.0, 2.0), (4.0, 1.0, 1.0)]):
        events += [kernel("conv_a_nchwc", "Conv", a, [1, 8, 4, 4]), kernel("conv_b", "Conv", b, [1, 3, 8, 8]),
                   kernel("up", "Upsample", c, [1, 8, 8, 8]), {"cat": "Node", "name": "up_fence_before", "dur": 99}]
    profile = summarise(events, warmup=1)  # the first run (90 ms) is warm-up and must not count
    assert [(n["node"], n["ms"]) for n in profile["nodes"]] == [("conv_a_nchwc", 4.0), ("conv_b", 1.0), ("up", 1.0)]
    assert profile["kernel_ms"] == 6.0 and profile["nodes"][0]["output_shape"] == [1, 8, 4, 4]
    assert [(r["op"], r["ms"], r["nodes"]) for r in profile["by_op"]] == [("Conv", 5.0, 2), ("Upsample", 1.0, 1)]
    assert profile["by_op"][0]["share"] == 5 / 6


@pytest.mark.parametrize("flag, value", [("--threads", "0"), ("--runs", "0")])
def test_bench_bad_options_are_user_errors(tmp_path, flag, value, capsys):
    argv = ["bench", "--checkpoint", str(tmp_path / "x.safetensors"), "--out", str(tmp_path / "b"), flag, value]
    assert distilswap.main(argv) == 2
    assert "\n" not in capsys.readouterr().err.strip()
