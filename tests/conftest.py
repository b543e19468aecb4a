"""Shared test setup: the repo root on sys.path (so tests also run before `pip install -e .`), CPU only."""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
