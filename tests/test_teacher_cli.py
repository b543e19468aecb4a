"""The teacher's commands end to end on a tiny model: train → swap → pairs from its snapshots."""
import json

import numpy as np
import pytest
import torch

import distilswap
import teacher.train  # noqa: F401  (imported before the patch below, so undoing it restores the real loader)
from facekit.faces.imageio import write_image
from teacher_tiny import TINY_UNET, tiny_experts


@pytest.fixture(autouse=True)
def tiny_world(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    experts = tiny_experts()
    # Trained experts are another stage's product: stand in tiny random ones wherever they are loaded.
    monkeypatch.setattr("teacher.experts.load_experts", lambda *a, **k: experts)
    monkeypatch.setattr("teacher.train.load_experts", lambda *a, **k: experts)
    yield
    torch.set_num_threads(threads)


def test_train_swap_and_pairs_from_the_command_line(tmp_path, capsys):
    unet = tmp_path / "unet.yaml"
    unet.write_text(json.dumps(TINY_UNET.to_dict()))
    run = tmp_path / "run"
    assert distilswap.main(["teacher", "train", "--config", "configs/teacher_train_demo.yaml", "--unet", str(unet),
                            "--out", str(run), "--steps", "2", "--batch-size", "2",
                            "--snapshot-fractions", "0.5,1", "--experts", "unused"]) == 0
    snapshots = sorted(str(p) for p in (run / "snapshots").glob("*.safetensors"))
    assert len(snapshots) == 2

    rng = np.random.default_rng(0)
    faces = []
    for name in ("alice", "bob", "carol"):
        path = tmp_path / f"{name}.png"
        write_image(path, rng.random((40, 40, 3)))
        faces.append(str(path))
    swap_args = ["--experts", "unused", "--preset", "demo", "--steps", "6", "--skip", "2", "--views", "2",
                 "--mask-ramp", "2"]
    assert distilswap.main(["teacher", "swap", "--teacher", snapshots[-1], "--source", faces[0], "--target",
                            *faces[1:], "--out", str(tmp_path / "swaps"), *swap_args]) == 0
    written = sorted(p.name for p in (tmp_path / "swaps").iterdir())
    assert written == ["000_alice__bob.png", "001_alice__carol.png"]
    # two targets with one file name (other folders) get two results, and nothing earlier is replaced
    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / "bob.png"
    write_image(twin, rng.random((40, 40, 3)))
    before = (tmp_path / "swaps" / "000_alice__bob.png").read_bytes()
    again = ["teacher", "swap", "--teacher", snapshots[-1], "--source", faces[0], "--target", faces[1], str(twin),
             "--out", str(tmp_path / "swaps"), *swap_args]
    assert distilswap.main(again) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "swaps" / "000_alice__bob.png").read_bytes() == before
    assert distilswap.main(again + ["--out", str(tmp_path / "twins")]) == 0
    assert sorted(p.name for p in (tmp_path / "twins").iterdir()) == ["000_alice__bob.png", "001_alice__bob.png"]

    pairs = tmp_path / "pairs"
    assert distilswap.main(["pairs", "generate", "--teacher", "diffface", "--snapshots", *snapshots, "--total", "3",
                            "--shard-size", "2", "--image-size", "32", "--out", str(pairs), *swap_args]) == 0
    assert distilswap.main(["pairs", "info", str(pairs)]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 pairs in 2/2 shards" in out and "step_0000001" in out and "step_0000002" in out


def test_bad_input_is_one_line(tmp_path, capsys):
    assert distilswap.main(["teacher", "swap", "--source", "a.png", "--target", "b.png", "--out", str(tmp_path)]) == 2
    assert "exactly one of --teacher" in capsys.readouterr().err
    assert distilswap.main(["pairs", "info", str(tmp_path)]) == 2
    assert "not a pairs data set" in capsys.readouterr().err
    assert distilswap.main(["pairs", "generate", "--teacher", "diffface", "--total", "2", "--out",
                            str(tmp_path / "p")]) == 2
    assert "--snapshots" in capsys.readouterr().err
