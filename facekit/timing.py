"""Timing several calls in interleaved rounds: the one place the benchmarks read the wall clock per call.

Round-robin over the calls, so load from other work on a shared machine hits all of them alike and their
ratios stay meaningful even when absolute times drift.
"""
from __future__ import annotations

import time
from typing import Callable


def time_rounds(calls: dict[str, Callable[[], object]], rounds: int, warmup: int = 1, label: str | None = None,
                sync: Callable[[], object] | None = None) -> tuple[float, dict[str, list[float]]]:
    """`warmup` untimed calls of each (allocation, kernel selection, compilation), then `rounds` rounds over
    all of them. Returns the warm-up's seconds and every timed call's seconds by name. `sync` waits for an
    asynchronous device (CUDA) before each clock read; `label` shows a progress bar."""
    from tqdm import tqdm

    sync = sync or (lambda: None)
    start = time.perf_counter()
    for call in calls.values():
        for _ in range(warmup):
            call()
    sync()
    warmup_s = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in tqdm(range(rounds), desc=label, unit="round", leave=False, disable=label is None):
        for name, call in calls.items():
            sync()
            start = time.perf_counter()
            call()
            sync()
            times[name].append(time.perf_counter() - start)
    return warmup_s, times
