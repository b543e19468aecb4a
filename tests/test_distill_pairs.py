"""End to end on the teacher's real pair format (oracle teacher, 32²): `quality train` / `quality score` from
the command line, distillation from the scored shards, and damaged shards refused with a reason."""
import json

import pytest

from distill.data import open_pairs
from distill.reweight import read_scores
from distill.train import DistillConfig, distill
from tests.distill_fixtures import tiny_embedder


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    from teacher.experts import Experts
    from teacher.pairs import OracleTeacher, generate_pairs

    root = tmp_path_factory.mktemp("pairs")
    generate_pairs(root, OracleTeacher(), Experts(tiny_embedder()), total=16, shard_size=8, image_size=32,
                   progress=False)
    return root


def test_quality_cli_then_distill_from_shards(pair_dir, tmp_path, capsys):
    from distilswap import main

    model = tmp_path / "q.safetensors"
    assert main(["quality", "train", "--pairs", str(pair_dir), "--out", str(model), "--steps", "2",
                 "--batch-size", "4", "--input-size", "32"]) == 0
    assert "Spearman" in capsys.readouterr().out
    assert json.loads(model.with_suffix(".json").read_text())["init"] == "random init"
    shards_before = {p.name: p.stat().st_mtime_ns for p in (pair_dir / "shards").iterdir()}
    assert main(["quality", "score", "--pairs", str(pair_dir), "--model", str(model)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (pair_dir / "shards").iterdir()} == shards_before
    scores, meta = read_scores(pair_dir / "scores.json")
    pairs = open_pairs(pair_dir)
    assert set(scores) == set(pairs.pair_ids) and meta["combination"] == "product"
    assert meta["pairs_fingerprint"] == pairs.fingerprint
    assert sum(s["a"] for s in scores.values()) / len(scores) == pytest.approx(1.0, abs=1e-4)
    assert (pair_dir / "scores_a.png").is_file()

    config = DistillConfig(steps=1, width=0.25, batch_size=4, val_fraction=0.3, amp=False)
    result = distill(pairs, tiny_embedder(), None, config, tmp_path / "run", scores, "scores.json", progress=False)
    assert result["run"]["train_pairs"] + result["run"]["val_pairs"] == 16
    # oracle pairs: the perfect swap is re-rendered, so both models are also measured against it
    assert pairs.has_truth and result["teacher"]["truth_l1"] < result["student"]["truth_l1"]


def test_damaged_shard_is_refused_with_reason(pair_dir, tmp_path, capsys):
    import shutil

    from distilswap import main

    broken = tmp_path / "broken"
    shutil.copytree(pair_dir, broken)
    shard = sorted((broken / "shards").glob("*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    assert main(["quality", "train", "--pairs", str(broken), "--out", str(tmp_path / "q.safetensors")]) == 2
    err = capsys.readouterr().err
    assert f"{shard.name} is damaged: delete it and rerun" in err and len(err.strip().splitlines()) == 1
