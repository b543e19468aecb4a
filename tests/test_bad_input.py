"""Bad input across every subcommand: exit 2, one line `distilswap: error: ...` naming the problem, no
traceback, and every file the user had (inputs and earlier outputs) byte-identical afterwards."""
import hashlib
import io
import json
from pathlib import Path

import pytest
import torch

import distilswap

# (argv, what the one line must contain). {d} is a folder of the user's files, made fresh for each case:
# afile (a file), bad.yaml (a syntax error), list.yaml (not a mapping), types.yaml (a wrong type), noise.png
# (an image without a face), junk.safetensors / junk.pt / junk.npz / junk.onnx (corrupt), experts/ (not trained).
CASES = [
    (["swap", "--model", "m.onnx", "--target", "t.png", "--out", "{d}/o.png", "--onnx-pixels", "bgr"],
     "swap: argument --onnx-pixels: invalid choice: 'bgr'"),
    (["bench", "--peer", "{d}/p.onnx"], "bench: the following arguments are required: --checkpoint, --out"),
    (["teacher", "train", "--steps", "many"], "teacher train: argument --steps: invalid int value: 'many'"),
    (["teacher", "train", "--batch-size", "0", "--out", "{d}/t"], "batch_size must be a whole number ≥ 1, got 0"),
    (["teacher", "train", "--steps", "0", "--out", "{d}/t"], "steps must be a whole number ≥ 1, got 0"),
    (["teacher", "train", "--lr", "-1", "--out", "{d}/t"], "lr must be a number > 0"),
    (["teacher", "train", "--checkpoint-every", "0", "--out", "{d}/t"], "checkpoint_every must be a whole number"),
    (["teacher", "train", "--snapshot-fractions", "0,2,abc", "--out", "{d}/t"], "snapshot_fractions must be numbers"),
    (["teacher", "train", "--config", "{d}/bad.yaml"], "bad.yaml: not valid YAML at line 2"),
    (["teacher", "train", "--config", "{d}/list.yaml"], "expected a mapping of training settings, got list"),
    (["teacher", "train", "--config", "{d}/types.yaml"], "batch_size must be a whole number like 8, got 'lots'"),
    (["teacher", "train", "--config", "{d}/missing.yaml"], "missing.yaml: no such training settings file"),
    (["teacher", "train", "--experts", "{d}/nope", "--out", "{d}/t"], "experts directory"),
    (["teacher", "swap", "--teacher", "{d}/junk.safetensors", "--source", "a.png", "--target", "b.png", "--out", "{d}/s"],
     "not a readable safetensors file"),
    (["teacher", "swap", "--teacher", "{d}/none.safetensors", "--source", "a.png", "--target", "b.png", "--out", "{d}/s"],
     "not found"),
    (["teacher", "swap", "--source", "a.png", "--target", "b.png", "--out", "{d}/s"], "exactly one of --teacher"),
    (["teacher", "evaluate", "--teacher", "{d}/junk.safetensors", "--judge", "{d}", "--out", "{d}/e", "--pairs", "0"],
     "--pairs and --batch-size must be at least 1"),
    (["teacher", "ship", "--run", "{d}", "--experts", "{d}/experts", "--out", "{d}/models"], "no training checkpoints"),
    (["teacher", "bench", "--batch-size", "0"], "--batch-size and --repeats must be at least 1"),
    (["teacher", "bench", "--batch-size", "8,x"], "--batch-size and --repeats must be at least 1"),
    (["teacher", "bench", "--variants", "fp32+bf16"], "'fp32+bf16' is not a variant"),
    (["teacher", "bench", "--variants", "bf16,fast"], "'fast' is not a variant"),
    (["teacher", "bench", "--out", "{d}/teacher_bench"], "already holds a teacher bench; pass --force"),
    (["pairs", "generate", "--total", "0", "--out", "{d}/p"], "--total and --shard-size must be at least 1"),
    (["pairs", "generate", "--total", "4", "--shard-size", "0", "--out", "{d}/p"], "--total and --shard-size must be"),
    (["pairs", "generate", "--total", "4", "--fractions", "0,2,abc", "--out", "{d}/p"], "--fractions 0,2,abc"),
    (["pairs", "generate", "--total", "4", "--out", "{d}/afile"], "afile"),
    (["pairs", "generate", "--total", "4", "--out", "{d}"], "already holds other files"),
    (["pairs", "generate", "--total", "4", "--teacher", "diffface", "--out", "{d}/p"], "needs --snapshots"),
    (["pairs", "info", "{d}"], "not a pairs data set"),
    (["pairs", "info", "{d}/damaged"], "damaged, not valid JSON"),
    (["pairs", "convert", "{d}", "--out", "{d}/v2"], "not a pairs data set"),
    (["pairs", "bench", "--out", "{d}"], "is not empty"),
    (["pairs", "bench", "--out", "{d}/b", "--workers", "0"], "--workers [0]"),
    (["quality", "train", "--pairs", "{d}/nope", "--out", "{d}/q.safetensors"], "no such pair directory"),
    (["quality", "train", "--pairs", "{d}", "--out", "{d}/q.json"], "name the model file .safetensors"),
    (["quality", "train", "--pairs", "{d}", "--out", "{d}/q.safetensors", "--batch-size", "0"], "batch_size must be a whole number ≥ 2, got 0"),
    (["quality", "train", "--pairs", "{d}", "--out", "{d}/q.safetensors", "--lr", "-1"], "lr must be a number > 0, got -1.0"),
    (["quality", "score", "--pairs", "{d}", "--model", "{d}/junk.safetensors"], "not a pairs data set"),
    (["experts", "train", "--world", "synthetic", "--out", "{d}/x", "--config", "{d}/bad.yaml"], "not valid YAML"),
    (["experts", "train", "--world", "synthetic", "--out", "{d}/x", "--config", "{d}/list.yaml"], "expected a mapping"),
    (["experts", "train", "--world", "synthetic", "--out", "{d}/afile", "--preset", "tiny"], "a file is in the way"),
    (["experts", "train", "--world", "synthetic", "--out", "{d}/x", "--preset", "nope"], "unknown experts preset"),
    (["world", "dataset", "--out", "{d}/w", "--identities", "0"], "need at least 2 identities"),
    (["world", "dataset", "--out", "{d}/w", "--size", "7"], "--size 7 is out of range"),
    (["world", "dataset", "--out", "{d}/afile"], "a file is in the way"),
    (["world", "render", "--out", "{d}/afile/x.png"], "a file is in the way"),
    (["faces", "--photos", "{d}/nope", "--out", "{d}/f"], "nope: no such folder"),
    (["faces", "--photos", "{d}", "--out", "{d}/f", "--resolution", "7"], "--resolution 7 is out of range"),
    (["identity", "--image", "{d}/afile", "--embedder", "{d}/experts", "--out", "{d}/i.npz"], "unknown source type"),
    (["identity", "--dataset", "{d}/nope", "--embedder", "{d}/experts", "--out", "{d}/i.npz"], "dataset.json"),
    (["identity", "--image", "{d}/noise.png", "--embedder", "{d}/experts", "--out", "{d}/afile"], "already exists"),
    (["student", "build", "--out", "{d}/afile/x.safetensors"], "a file is in the way"),
    (["student", "info", "{d}/junk.safetensors"], "not a readable safetensors file"),
    (["student", "import", "{d}/junk.pt", "--out", "{d}/s.safetensors"], "not a readable"),
    (["distill", "--pairs", "{d}/nope", "--out", "{d}/dd"], "no such pair directory"),
    (["distill", "--pairs", "{d}", "--lr", "-1", "--out", "{d}/dd"], "lr must be a number > 0, got -1.0"),
    (["distill", "--pairs", "{d}", "--config", "{d}/bad.yaml", "--out", "{d}/dd"], "not valid YAML"),
    (["export", "--checkpoint", "{d}/junk.safetensors", "--source", "{d}/junk.npz", "--out", "{d}/x"],
     "not a readable safetensors file"),
    (["export", "--checkpoint", "{d}/junk.safetensors", "--source", "{d}/junk.npz", "--out", "{d}", "--force"],
     "not an earlier export"),
    (["export", "--checkpoint", "{d}/junk.safetensors", "--source", "{d}/junk.npz", "--out", "{d}/x", "--formats",
      "onnx,int8", "--calibration", "{d}/nope"], "calibration folder not found"),
    (["export", "verify", "{d}"], "no manifest.json"),
    (["bench", "--checkpoint", "{d}/junk.safetensors", "--out", "{d}/b"], "not a readable safetensors file"),
    (["bench", "--checkpoint", "{d}/none.safetensors", "--out", "{d}/b", "--runs", "0"], "--runs and --peer-runs"),
    (["bench", "--checkpoint", "{d}/junk.safetensors", "--out", "{d}/b", "--peer", "{d}/afile"], "--peer"),
    (["swap", "--model", "{d}/junk.safetensors", "--source", "{d}/afile", "--target", "{d}/noise.png",
      "--out", "{d}/o.png"], "unknown source type"),
    (["swap", "--model", "{d}/junk.safetensors", "--target", "{d}/noise.png", "--out", "{d}/o.mp4", "--detect-every", "0"],
     "--detect-every 0"),
    (["swap", "--model", "{d}/junk.onnx", "--target", "{d}/noise.png", "--out", "{d}/o.png", "--engine", "openvino"],
     "junk.onnx: not a loadable ONNX model for openvino"),
    (["swap", "--model", "{d}/junk.onnx", "--target", "{d}/noise.png", "--out", "{d}/o.png"],
     "junk.onnx: not a loadable ONNX model for onnxruntime"),
    (["evaluate", "--model", "target", "--sources", "{d}/nope", "--targets", "{d}", "--out", "{d}/e"],
     "no such folder of source photos"),
    (["evaluate", "--model", "{d}/junk.safetensors", "--sources", "{d}", "--targets", "{d}", "--out", "{d}/e"],
     "needs --embedder"),
    (["run", "--config", "{d}/missing.yaml"], "no such pipeline settings file"),
    (["run", "--config", "{d}/bad.yaml"], "not valid YAML"),
    (["run", "--config", "{d}/list.yaml"], "expected a mapping of pipeline settings"),
    (["report", "{d}"], "no finished stages"),
    (["compare", "{d}", "--out", "{d}/c"], "no eval.json"),
]


def _user_files(d: Path) -> None:
    (d / "afile").write_text("x")
    (d / "bad.yaml").write_text("steps: [1, 2\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "types.yaml").write_text("batch_size: lots\n")
    (d / "junk.safetensors").write_bytes(b"\x00" * 7)
    (d / "junk.pt").write_bytes(b"not a pickle")
    (d / "junk.npz").write_bytes(b"not a zip")
    (d / "junk.onnx").write_bytes(b"not a model")
    (d / "experts").mkdir()
    (d / "teacher_bench").mkdir()
    (d / "teacher_bench" / "bench.md").write_text("an earlier teacher bench\n")
    (d / "damaged").mkdir()
    (d / "damaged" / "manifest.json").write_text('{"format": "distilswap-pair')  # cut short
    from facekit.faces.imageio import write_image
    import numpy as np

    write_image(d / "noise.png", np.random.default_rng(0).random((48, 48, 3)))


def _snapshot(d: Path) -> dict:
    return {p.relative_to(d): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(d.rglob("*"))}


def _one_error_line(argv: list[str], capsys) -> str:
    """Run the CLI; it must exit 2 with one `distilswap: error:` line, which is returned."""
    code = distilswap.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("distilswap: error:") and "\n" not in err, err
    return err


def _write_files(d: Path, files: dict) -> None:
    for name, content in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(content if isinstance(content, bytes) else content.encode())


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0][:3]) + f" #{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_clear_line_and_changes_nothing(argv, message, tmp_path, capsys, monkeypatch):
    d = tmp_path / "user"
    d.mkdir()
    _user_files(d)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(d)
    err = _one_error_line([a.format(d=d) for a in argv], capsys)
    assert "Traceback" not in err and message in err, err
    after = _snapshot(d)
    assert {k: v for k, v in after.items() if k in before} == before, "a file of the user's changed"
    assert not [k for k in after if k not in before and not str(k).startswith(".")] or argv[0] == "run", \
        f"wrote {[str(k) for k in after if k not in before]}"


def test_the_sweep_covers_every_subcommand():
    covered = {argv[0] for argv, _ in CASES}
    parser = distilswap.build_parser()
    commands = set(next(a for a in parser._actions if a.dest == "command").choices)
    assert commands - covered == set(), f"no bad-input case for {sorted(commands - covered)}"
    assert len(CASES) >= 40


def _finished_run_state() -> bytes:
    """The newest training state of a finished one-step `teacher train` run, as `teacher ship` reads it."""
    buffer = io.BytesIO()
    torch.save({"config": json.dumps({"steps": 1}), "step": 1}, buffer)
    return buffer.getvalue()


RUN = {"t/checkpoints/latest.json": '{"step": 1}', "t/checkpoints/step_0000001.state.pt": _finished_run_state()}
V1_PAIRS = json.dumps({"format": "distilswap-pairs", "version": 1, "total_pairs": 4, "shard_size": 2})

# (argv, files written under {d} after _user_files, the damaged one the line must name): a JSON file of ours cut
# short, a list in place of an object, or an object without what the command reads from it.
DAMAGED_JSON = [
    (["export", "verify", "{d}/x"], {"x/manifest.json": "[]"}, "x/manifest.json"),
    (["export", "verify", "{d}/x"], {"x/manifest.json": "{}"}, "x/manifest.json"),
    (["export", "verify", "{d}/x"], {"x/manifest.json": '{"resolution": 64, "artifacts": {"a.onnx": {}}}'}, "x/manifest.json"),
    (["run", "--config", "{d}/p.yaml", "--out", "{d}/r"], {"p.yaml": "stages:\n  a: [report, x]\n",
                                                          "r/.stages/a.json": '{"key": '}, "r/.stages/a.json"),
    (["report", "{d}/r"], {"r/.stages/a.json": "[]"}, "r/.stages/a.json"),
    (["report", "{d}/r"], {"r/.stages/a.json": '{"order": 1}', "r/a/verification.json": '{"checks'},
     "r/a/verification.json"),
    (["experts", "show", "{d}/e"], {"e/embedder.json": '{"class": '}, "e/embedder.json"),
    (["experts", "train", "--world", "synthetic", "--preset", "tiny", "--out", "{d}/e"],
     {"e/embedder.json": '{"config": {}}', "e/embedder.safetensors": ""}, "e/embedder.json"),
    (["pairs", "generate", "--total", "4", "--experts", "{d}/e", "--out", "{d}/p"],
     {"e/embedder.json": "[]", "e/embedder.safetensors": ""}, "e/embedder.json"),
    (["pairs", "convert", "{d}/v1", "--out", "{d}/damaged"], {"v1/manifest.json": V1_PAIRS}, "damaged/manifest.json"),
    (["teacher", "ship", "--run", "{d}/t", "--experts", "{d}/e", "--out", "{d}/m"], {**RUN, "e/results.json": "{"},
     "e/results.json"),
    (["teacher", "ship", "--run", "{d}/t", "--experts", "{d}/experts", "--out", "{d}/m", "--force"],
     {**RUN, "m/manifest.json": '{"files": '}, "m/manifest.json"),
    (["teacher", "swap", "--teacher", "{d}/m/teacher/t.safetensors", "--source", "a.png", "--target", "b.png", "--out",
      "{d}/s"], {"m/manifest.json": '{"format": "distilswap-models/1"}'}, "m/manifest.json"),
    (["teacher", "swap", "--teacher", "{d}/m/teacher/t.safetensors", "--source", "a.png", "--target", "b.png", "--out",
      "{d}/s"], {"m/manifest.json": '{"format": "distilswap-models/1", "files": {"teacher/t.saf'}, "m/manifest.json"),
    (["world", "dataset", "--out", "{d}/w"], {"w/dataset.json": '{"format": '}, "w/dataset.json"),
    (["compare", "{d}/c", "--out", "{d}/o"], {"c/eval.json": "[]"}, "c/eval.json"),
]


@pytest.mark.parametrize("argv, files, damaged", DAMAGED_JSON,
                         ids=[" ".join(a for a in c[0][:2] if "{" not in a) + f" {c[2]}" for c in DAMAGED_JSON])
def test_a_damaged_json_file_of_ours_is_one_line_naming_it(argv, files, damaged, tmp_path, capsys, monkeypatch):
    d = tmp_path / "user"
    d.mkdir()
    _user_files(d)
    _write_files(d, files)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(d)
    err = _one_error_line([a.format(d=d) for a in argv], capsys)
    assert f"{d / damaged}: damaged" in err, err
    assert _snapshot(d) == before, "a file of the user's changed or was added"


def test_a_damaged_shipped_expert_is_restored_not_retrained(tmp_path, capsys):
    """Retraining a shipped expert would write files that models/manifest.json then refuses: restore it."""
    (tmp_path / "m" / "experts").mkdir(parents=True)
    (tmp_path / "m" / "manifest.json").write_text('{"format": "distilswap-models/1", "files": {}}')
    (tmp_path / "m" / "experts" / "embedder.json").write_text('{"class": ')
    assert distilswap.main(["experts", "show", str(tmp_path / "m" / "experts")]) == 2
    err = capsys.readouterr().err
    assert "embedder.json: damaged" in err and "git checkout models/" in err and "train it again" not in err, err


def test_shipping_over_the_experts_it_ships_is_refused_before_anything_goes(tmp_path, capsys):
    """`teacher ship --experts models/experts --out models --force` deleted the experts, then copied nothing."""
    d = tmp_path / "user"
    files = {**RUN, "m/manifest.json": '{"format": "distilswap-models/1", "files": {"experts/embedder.json": {}}}',
             "m/experts/embedder.json": "{}"}
    _write_files(d, files)
    before = _snapshot(d)
    argv = ["teacher", "ship", "--run", str(d / "t"), "--experts", str(d / "m" / "experts"), "--out", str(d / "m"), "--force"]
    assert "is the folder that --out" in _one_error_line(argv, capsys)
    assert _snapshot(d) == before
