"""Where a video swap spends its time: seconds per stage, summed over frames (for `distilswap swap --stats`).

Stages running in different threads overlap, so their times add up to more than the wall time; the wall
time gives the frame rate."""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


class StageClock:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self.started = time.perf_counter()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds
            self.calls[stage] += 1

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def timed(self, items: Iterable[T], name: str) -> Iterator[T]:
        """`items`, with the time spent producing each one counted as `name`."""
        iterator = iter(items)
        while True:
            with self.stage(name):
                item = next(iterator, StopIteration)
            if item is StopIteration:
                return
            yield item

    def summary(self, frames: int) -> dict:
        wall = time.perf_counter() - self.started
        return {"frames": frames, "wall_s": wall, "fps": frames / wall if wall > 0 else 0.0,
                "ms_per_frame": {name: 1000 * s / max(frames, 1) for name, s in self.seconds.items()}}

    def table(self, frames: int) -> str:
        report = self.summary(frames)
        lines = [f"{frames} frames in {report['wall_s']:.1f} s: {report['fps']:.1f} fps"]
        lines += [f"  {name:<16} {ms:7.2f} ms/frame" for name, ms in report["ms_per_frame"].items()]
        return "\n".join(lines)
