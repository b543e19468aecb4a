"""Shipping a teacher: train (tiny) → ship as fp16 with a manifest → evaluate against ground truth; a shipped
file that is missing or damaged is refused in one line that says how to restore it."""
import json

import pytest
import torch

import distilswap
from teacher.checkpoint import load_teacher
from teacher_tiny import TINY_UNET

SAMPLING = ["--preset", "demo", "--steps", "4", "--skip", "1", "--views", "2", "--mask-ramp", "2"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ship")
    experts, run, models = root / "experts", root / "run", root / "models"
    assert distilswap.main(["experts", "train", "--world", "synthetic", "--out", str(experts), "--preset", "tiny",
                            "--only", "embedder", "parser", "--quiet"]) == 0
    unet = root / "unet.yaml"
    unet.write_text(json.dumps(TINY_UNET.to_dict()))
    assert distilswap.main(["teacher", "train", "--config", "configs/teacher_train_demo.yaml", "--unet", str(unet),
                            "--out", str(run), "--steps", "2", "--batch-size", "2", "--snapshot-fractions", "0.5,1",
                            "--experts", str(experts)]) == 0
    assert distilswap.main(["teacher", "ship", "--run", str(run), "--experts", str(experts), "--out", str(models),
                            "--made-by", "the test"]) == 0
    yield root
    torch.set_num_threads(threads)


def test_shipped_models_are_fp16_listed_and_load_like_the_originals(shipped):
    models = shipped / "models"
    manifest = json.loads((models / "manifest.json").read_text())
    assert manifest["teacher"]["steps"] == 2 and manifest["made_by"] == ["the test"]
    assert [s["fraction"] for s in manifest["teacher"]["snapshots"]] == [0.5, 1.0]
    assert {"teacher/step_0000001.safetensors", "teacher/step_0000002.safetensors", "experts/embedder.safetensors",
            "experts/embedder.json", "experts/parser.safetensors"} <= set(manifest["files"])
    shipped_model, _ = load_teacher(models / "teacher" / "step_0000002.safetensors")
    trained, _ = load_teacher(shipped / "run" / "snapshots" / "step_0000002.safetensors")
    for (name, a), b in zip(shipped_model.state_dict().items(), trained.state_dict().values()):
        assert a.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-3, atol=1e-4), name
    assert distilswap.main(["teacher", "ship", "--run", str(shipped / "run"), "--experts", str(shipped / "experts"),
                            "--out", str(models)]) == 2  # never replaces shipped models without --force


def test_shipping_a_subset_replaces_only_what_the_earlier_ship_wrote(shipped, tmp_path):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(shipped / "models", models)
    (models / "NOTES.txt").write_text("mine")
    base = ["teacher", "ship", "--run", str(shipped / "run"), "--experts", str(shipped / "experts"), "--out", str(models)]
    assert distilswap.main(base + ["--snapshot-steps", "7", "--force"]) == 2  # no such snapshot: nothing touched
    assert (models / "teacher" / "step_0000001.safetensors").is_file()
    assert distilswap.main(base + ["--snapshot-steps", "2", "--force"]) == 0  # the final snapshot only
    manifest = json.loads((models / "manifest.json").read_text())
    assert [s["step"] for s in manifest["teacher"]["snapshots"]] == [2]
    assert sorted(p.name for p in (models / "teacher").iterdir()) == ["step_0000002.safetensors"]
    assert (models / "NOTES.txt").read_text() == "mine"  # not the earlier ship's: kept


def test_a_damaged_or_missing_shipped_file_is_refused_with_how_to_restore(shipped, tmp_path, capsys):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(shipped / "models", models)
    snapshot = models / "teacher" / "step_0000002.safetensors"
    data = bytearray(snapshot.read_bytes())
    data[-1] ^= 1
    snapshot.write_bytes(bytes(data))
    swap = ["teacher", "swap", "--teacher", str(snapshot), "--experts", str(models / "experts"), "--source", "a.png",
            "--target", "b.png", "--out", str(tmp_path / "o")]
    assert distilswap.main(swap) == 2
    err = capsys.readouterr().err.strip()
    assert "damaged" in err and "git checkout models/" in err and "\n" not in err
    (models / "experts" / "parser.safetensors").unlink()
    snapshot.write_bytes((shipped / "models" / "teacher" / snapshot.name).read_bytes())
    assert distilswap.main(swap) == 2
    err = capsys.readouterr().err.strip()
    assert "parser.safetensors is missing" in err and "git checkout models/" in err


@pytest.mark.parametrize("cut", [0, 3, 40])
def test_a_manifest_cut_short_is_refused_even_before_its_format_string(shipped, tmp_path, capsys, cut):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(shipped / "models", models)
    manifest = models / "manifest.json"
    manifest.write_text(manifest.read_text()[:cut])
    swap = ["teacher", "swap", "--teacher", str(models / "teacher" / "step_0000002.safetensors"), "--experts",
            str(models / "experts"), "--source", "a.png", "--target", "b.png", "--out", str(tmp_path / "o")]
    assert distilswap.main(swap) == 2
    err = capsys.readouterr().err.strip()
    assert "manifest.json: damaged, not valid JSON" in err and "git checkout models/" in err and "\n" not in err


def test_another_tools_manifest_above_a_file_is_passed_over(shipped, tmp_path):
    import shutil

    from facekit.shipped import check_shipped

    run = tmp_path / "project" / "run"
    shutil.copytree(shipped / "run" / "snapshots", run / "snapshots")
    (tmp_path / "project" / "manifest.json").write_text("name: not json\n")  # e.g. a YAML-ish file of another tool
    check_shipped(run / "snapshots" / "step_0000002.safetensors")  # no error: not a shipped layout


def test_evaluate_scores_swaps_against_the_truth_with_floor_ceiling_and_ablation(shipped):
    out = shipped / "eval"
    models = shipped / "models"
    assert distilswap.main(["teacher", "evaluate", "--teacher", str(models / "teacher" / "step_0000002.safetensors"),
                            "--experts", str(models / "experts"), "--judge", str(shipped / "experts"), "--pairs", "3",
                            "--batch-size", "2", "--ablation", "--out", str(out), *SAMPLING,
                            "--preset", "official"]) == 0
    for preset in ("demo", "official"):
        result = json.loads((out / preset / "eval.json").read_text())
        rows = result["rows"]
        assert {"target (floor)", "truth (ceiling)", "no guidance", "+ identity", "full", "full, blending off"} <= set(rows)
        assert rows["target (floor)"]["background_l1"] == 0  # the floor is the target itself
        assert rows["truth (ceiling)"]["l1_face"] == 0
        assert rows["full"]["background_l1"] < rows["full, blending off"]["background_l1"]
        assert [c["check"] for c in result["criteria"]] == [
            "identity similarity to the source (judge)", "face L1 vs truth", "background L1 vs target"]
        assert (out / preset / "sheet.png").stat().st_size > 0
    assert "| check (full sampler) |" in (out / "demo" / "eval.md").read_text()
    assert (out / "samples.png").stat().st_size > 0  # unguided samples conditioned on held-out identities
    dependence = json.loads((out / "samples.json").read_text())  # and whether they follow those identities
    assert set(dependence) == {"classifier-free guidance scale (1 = off)",
                               "judge similarity to its own identity", "judge similarity to another identity",
                               "change when only the identity changes", "change when only the noise changes"}
    assert "| change when only the identity changes |" in (out / "samples.md").read_text()
