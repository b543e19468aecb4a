"""Student checkpoints: round trip, atomic writes, and clear errors for foreign or damaged files."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from facekit.errors import UserError
from student.checkpoint import load_student, save_student
from student.config import StudentConfig, scaled
from student.model import MobileFaceSwap

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def small():
    torch.manual_seed(0)
    return MobileFaceSwap(scaled(StudentConfig(resolution=64), 0.25))


def test_round_trip_keeps_config_and_weights(small, tmp_path):
    path = save_student(small, tmp_path / "s.safetensors")
    loaded = load_student(path)
    assert loaded.config == small.config
    for (name, a), (_, b) in zip(small.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_failed_save_keeps_the_previous_file(small, tmp_path, monkeypatch):
    path = save_student(small, tmp_path / "s.safetensors")
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", explode)
    with pytest.raises(OSError):
        save_student(MobileFaceSwap(small.config), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]  # no temp file left behind


def test_foreign_truncated_and_mismatched_files_are_named(small, tmp_path):
    good = save_student(small, tmp_path / "s.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[:1000])
    with pytest.raises(UserError, match="cut.safetensors: not a readable safetensors file"):
        load_student(tmp_path / "cut.safetensors")

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="not a DistilSwap student checkpoint"):
        load_student(tmp_path / "other.safetensors")

    state = {k: v for k, v in small.state_dict().items() if k != "final.7.bias"}
    meta = {"format": "distilswap-student/1", "config": json.dumps(small.config.to_dict())}
    save_file(state, str(tmp_path / "partial.safetensors"), metadata=meta)
    with pytest.raises(UserError, match=r"missing: final\.7\.bias"):
        load_student(tmp_path / "partial.safetensors")


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    for args in (["student", "info", str(bad)], ["student", "build", "--out", str(tmp_path / "x.safetensors"), "--resolution", "100"]):
        done = subprocess.run([sys.executable, str(REPO / "distilswap.py"), *args], capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("distilswap: error:"), done.stderr
    assert not (tmp_path / "x.safetensors").exists()
