"""One resume mechanism for every training loop here (teacher, distillation, small experts).

A run's state is one dict of tensors and plain values, written atomically with `torch.save` and read back
with `weights_only=True` (nothing pickled is executed). Rerunning the same command loads it, refuses the
settings that would change what the run computes (naming each change), and restores the random number
generators, so a resumed run equals an uninterrupted one bit for bit.
"""
from __future__ import annotations

import errno
import pickle
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from .files import atomic_write, clear_temporaries


class DamagedState(Exception):
    """A state file that cannot be read (cut short, overwritten): the caller decides whether to fall back."""


def rng_state() -> dict[str, Any]:
    """The CPU and CUDA generator states (what a step draws next)."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_state(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write atomically: a crash mid-save keeps the previous state file whole."""
    return atomic_write(path, lambda temp: _torch_save(state, temp))


def _torch_save(state: Mapping[str, Any], temp: Path) -> None:
    try:
        torch.save(dict(state), temp)
    except RuntimeError as err:  # torch's zip writer reports a full disk as "unexpected pos …" / "file write failed"
        full = shutil.disk_usage(temp.parent).free < 64 << 20
        raise OSError(errno.ENOSPC if full else errno.EIO, f"cannot write it ({str(err).splitlines()[0]})", str(temp)) from None


def load_state(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any] | None:
    """The state at `path`, or None for a fresh run; clears the temporary a killed save left beside it."""
    path = Path(path)
    clear_temporaries(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as err:
        raise DamagedState(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    if not isinstance(state, dict):
        raise DamagedState(f"holds a {type(state).__name__}, not a training state")
    return state


def changed_settings(saved: Mapping[str, Any], current: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    """'key old → new' for each of `keys` that differs (a key the saved run did not have is not a change)."""
    return [f"{k} {saved[k]!r} → {current[k]!r}" for k in keys if k in saved and saved[k] != current[k]]


class InterruptFlag:
    """Ctrl-C lets the current step finish and be checkpointed (a step cut in half could not resume exactly):
    the loop checks `raised` after each step, saves, stops, and raises KeyboardInterrupt itself."""

    def __init__(self):
        self.raised = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        self.raised = True

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
