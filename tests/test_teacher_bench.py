"""`teacher bench`'s grid on a tiny teacher: every batch × variant, ours beside the official two-pass loop
(structure and bookkeeping only: no test asserts a wall-clock time)."""
import pytest
import torch

from facekit.errors import UserError
from teacher.bench import Variant, bench_grid, markdown, parse_variants, prepare_unet
from teacher.sampling import load_swap_config
from teacher_tiny import tiny_experts, tiny_unet


def test_variants_parse_and_name_themselves():
    assert [v.name for v in parse_variants("fp32, bf16+channels_last,channels_last+compile")] == [
        "fp32", "bf16+channels_last", "fp32+channels_last+compile"]
    with pytest.raises(UserError, match="'fp32\\+bf16' is not a variant"):
        parse_variants("fp32+bf16")


def test_prepare_unet_leaves_the_callers_model_alone():
    model = tiny_unet()
    unet = prepare_unet(model, Variant(channels_last=True))
    conv = next(m for m in unet.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    original = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert original.weight.is_contiguous() and original.weight is not conv.weight


def test_grid_times_every_batch_and_variant_against_the_official_loop():
    config = load_swap_config("demo", {"respacing": 10, "skip": 2, "views": 1, "gaze_weight": 0})
    report = bench_grid(tiny_unet(), tiny_experts(), config, [1, 2], [Variant(), Variant(channels_last=True)], repeats=1)
    assert [(r["batch"], r["variant"]) for r in report["rows"]] == [
        (1, "fp32"), (1, "fp32+channels_last"), (2, "fp32"), (2, "fp32+channels_last")]
    official = report["official_loop"]
    assert official["batch"] == 1 and official["variant"] == "fp32" and official["steps"] == 8
    assert official["two_pass_step_s"] == report["rows"][0]["two_pass_step_s"]  # batch 1 fp32 is not timed twice
    for row in report["rows"]:
        assert row["guided_step_s"] > 0 and row["two_pass_step_s"] > 0
        assert row["swaps_per_minute"] == pytest.approx(60 * row["batch"] / (8 * row["guided_step_s"]))
        assert row["over_official_loop"] == pytest.approx(row["swaps_per_minute"] / official["two_pass_swaps_per_minute"])
    table = markdown(report, "tiny")
    assert table.count("\n| 2 | fp32") == 2 and "The official loop (one pair at a time" in table
