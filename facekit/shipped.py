"""Weights that ship with the project (`models/`), checked against their manifest before anything loads them.

`models/manifest.json` lists every shipped file with its sha256 and says how it was made. A loader calls
`check_shipped(path)` first: a file under a folder with such a manifest that is missing, damaged or changed
is refused with one line saying how to restore it, never silently replaced by something untrained.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from facekit.errors import UserError

MANIFEST = "manifest.json"
FORMAT = "distilswap-models/1"
RESTORE = "restore it with `git checkout models/` or train your own (README: the shipped teacher)"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


LAYOUT = ("teacher", "experts")  # the folders `distilswap teacher ship` writes beside its manifest


def shipped_root(path: str | Path) -> tuple[Path, dict] | None:
    """(the folder above `path` holding a shipped-models manifest, that manifest), if any. A manifest of ours
    that is damaged is refused (UserError): one that names our format, or one that sits above `path` in the
    shipped layout (path under its teacher/ or experts/), even when cut before its format string. Another
    tool's manifest.json is passed over."""
    path = Path(path).absolute()
    for folder in path.parents:
        manifest = folder / MANIFEST
        if not manifest.is_file():
            continue
        in_layout = path.relative_to(folder).parts[0] in LAYOUT
        try:
            data = json.loads(manifest.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            if in_layout or _names_format(manifest):  # ours, damaged: its hashes can vouch for nothing
                raise UserError(f"{manifest}: damaged, not valid JSON; {RESTORE}") from None
            continue  # not ours: another tool's manifest.json
        if isinstance(data, dict) and data.get("format") == FORMAT:
            return folder, data
    return None


def _names_format(manifest: Path) -> bool:
    try:
        return FORMAT.encode() in manifest.read_bytes()
    except OSError:
        return False


def check_shipped(path: str | Path) -> None:
    """Refuse a shipped file (or folder of them) that is missing or does not match its manifest's sha256."""
    path = Path(path)
    found = shipped_root(path)
    if found is None:
        return
    root, files = found[0], found[1].get("files")
    if not isinstance(files, dict):
        raise UserError(f"{root / MANIFEST}: damaged, no list of files; {RESTORE}")
    relative = path.absolute().relative_to(root).as_posix()
    listed = {name: entry for name, entry in files.items() if name == relative or name.startswith(relative + "/")}
    if not listed:
        if not path.exists():
            raise UserError(f"{path}: not among the shipped models in {root / MANIFEST}")
        return
    for name, entry in sorted(listed.items()):
        file = root / name
        if not file.is_file():
            raise UserError(f"shipped model {file} is missing; {RESTORE}")
        if file_sha256(file) != entry["sha256"]:
            raise UserError(f"shipped model {file} is damaged (sha256 differs from {root / MANIFEST}); {RESTORE}")
