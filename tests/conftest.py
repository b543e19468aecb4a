"""Shared test setup: the repo root on sys.path (so tests also run before `pip install -e .`), CPU only."""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

import pytest  # noqa: E402

# Copied from ../shared/reference: the official checkpoints' names and shapes, our compatibility contract.
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


@pytest.fixture(scope="session")
def reference_tsv():
    """name -> shape of an official checkpoint manifest in tests/reference."""

    def read(name: str) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for line in (REFERENCE_DIR / name).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, shape = line.split("\t")[:2]
                shapes[key] = tuple(int(d) for d in shape.split("x")) if shape else ()
        return shapes

    return read


@pytest.fixture()
def one_thread():
    """Tiny models run faster on one thread (and leave the other core to a parallel job)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, so a result never depends on which tests ran before."""
    torch.manual_seed(0)
    np.random.seed(0)
