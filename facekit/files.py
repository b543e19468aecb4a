"""Writing the user's files safely: atomic and durable replacement (a crash never leaves a half file),
output folders that say in one line why they cannot be made, and clearing what a killed write left."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from facekit.errors import UserError


def durable_replace(temp: str | Path, path: str | Path) -> None:
    """Make a finished temporary file durable (fsync), then move it over `path`: a reader, even after a power
    cut, sees the old file or the whole new one."""
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, path)


def atomic_write(path: str | Path, write) -> Path:
    """Run write(temp_path) next to `path`, then move it into place durably: a crash never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = None
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
        os.close(fd)
        write(Path(temp))
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp's 0600 would otherwise become the file's permissions
        durable_replace(temp, path)
    except BaseException as err:
        if temp:
            Path(temp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename and Path(err.filename).parent == path.parent:
            err.filename = str(path)  # the user named the file, not our temporary beside it
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_dir(path: str | Path) -> Path:
    """Create an output directory (and its parents), or say in one line why it cannot be one."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{path} is a file (or lies under one); choose another output directory") from None
    except OSError as err:
        raise UserError(f"cannot create {path}: {err.strerror}; choose another output directory") from None
    if not path.is_dir():
        raise UserError(f"{path} is not a directory; choose another output directory")
    if not os.access(path, os.W_OK):
        raise UserError(f"{path} is not writable; choose another output directory")
    return path


def clear_temporaries(path: str | Path) -> int:
    """Remove what an atomic write of `path` killed mid-way left behind (call it where one process owns the
    file, e.g. when a run resumes); returns how many."""
    path = Path(path)
    stale = list(path.parent.glob(f".{path.stem}.*{path.suffix}")) if path.parent.is_dir() else []
    for temp in stale:
        temp.unlink(missing_ok=True)
    return len(stale)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def read_json(path: str | Path, remedy: str) -> dict:
    """A JSON object from a file we wrote, or one line naming the file and how to recover when it was damaged."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: damaged, not valid JSON ({err}); {remedy}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: damaged, expected a JSON object; {remedy}")
    return data
