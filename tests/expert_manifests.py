"""Parameter manifests of the official checkpoints (the compatibility contract), read from the shared TSVs."""
from __future__ import annotations

from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def read_manifest(name: str) -> dict[str, tuple[int, ...]]:
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"reference manifest {path} not available")
    shapes = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        shapes[fields[0]] = tuple(int(d) for d in fields[1].split("x")) if fields[1] else ()
    return shapes
