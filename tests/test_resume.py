"""The one resume mechanism: what a user relies on when a run stops and is started again."""
import errno
from collections import namedtuple

import pytest
import torch

from facekit import resume


def test_state_round_trips_and_a_damaged_file_is_reported_not_loaded(tmp_path):
    path = tmp_path / "state.pt"
    assert resume.load_state(path) is None  # a fresh run
    resume.save_state(path, {"step": 3, "weights": torch.arange(4.0), "rng": resume.rng_state()})
    state = resume.load_state(path)
    assert state["step"] == 3 and torch.equal(state["weights"], torch.arange(4.0))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(resume.DamagedState):
        resume.load_state(path)
    (tmp_path / ".state.abc123.pt").write_bytes(b"half")  # what a killed save leaves
    resume.load_state(tmp_path / "other.pt")
    assert (tmp_path / ".state.abc123.pt").exists()  # another file's temporary is not touched
    with pytest.raises(resume.DamagedState):
        resume.load_state(path)
    assert not (tmp_path / ".state.abc123.pt").exists()


def test_a_full_disk_during_torch_save_is_named_as_such(tmp_path, monkeypatch):
    """torch's zip writer says 'unexpected pos 1181696 vs 1181584' on a full disk: the user sees ENOSPC and
    the path, and the previous state file is kept whole."""
    path = tmp_path / "checkpoint.pt"
    resume.save_state(path, {"step": 1})
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 1181696 vs 1181584")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(resume.shutil, "disk_usage", lambda _: namedtuple("u", "total used free")(1, 1, 0))
    with pytest.raises(OSError) as err:
        resume.save_state(path, {"step": 2})
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_changed_settings_name_old_and_new_values():
    saved, now = {"lr": 0.1, "steps": 4, "old_key": 1}, {"lr": 0.2, "steps": 4, "new_key": 2}
    assert resume.changed_settings(saved, now, ["lr", "steps", "new_key"]) == ["lr 0.1 → 0.2"]
