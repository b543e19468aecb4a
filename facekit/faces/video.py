"""Video in and out with PyAV: RGB frames + frame rate in; H.264 MP4 out, carrying the source's audio.

The swap pipeline decodes a clip, swaps every frame and writes a new file; the soundtrack is copied packet
by packet when MP4 can hold its codec (AAC, MP3, ...) and re-encoded to AAC otherwise.
"""
from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import av
import numpy as np

from facekit.errors import UserError
from facekit.files import atomic_write

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
_MP4_AUDIO_COPY = {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}


@dataclass(frozen=True)
class VideoInfo:
    fps: Fraction
    width: int  # as players show it (a phone video's display rotation and mirroring applied)
    height: int
    frames: int  # as declared by the container (0 when unknown)
    has_audio: bool


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise UserError(f"{path}: no such video file")
    try:
        return av.open(str(path))
    except (av.FFmpegError, ValueError) as err:
        raise UserError(f"{path}: unreadable video ({err})") from None


def video_info(path: str | Path) -> VideoInfo:
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise UserError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        fps = stream.average_rate or stream.guessed_rate or Fraction(25)
        width, height = stream.codec_context.width, stream.codec_context.height
        if _first_display(container)[0] == 0:  # a portrait phone video stored as landscape
            width, height = height, width
        return VideoInfo(Fraction(fps), width, height, stream.frames, bool(container.streams.audio))


def _first_display(container: av.container.InputContainer) -> Display:
    try:
        return next((_display(frame) for frame in container.decode(video=0)), UNCHANGED)
    except av.FFmpegError:
        return UNCHANGED  # undecodable: iter_frames says so with the frame count


def count_frames(path: str | Path) -> int:
    """Frames of the first video stream, counted from its packets (no decoding), for containers that do not
    declare the count."""
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise UserError(f"{path}: has no video stream")
        try:
            return sum(packet.size > 0 for packet in container.demux(video=0))
        except av.FFmpegError as err:
            raise UserError(f"{path}: unreadable video ({err})") from None


Display = tuple[int, int, int, int]  # (a, b, c, d) of a display matrix: x' = a·x + c·y, y' = b·x + d·y
UNCHANGED: Display = (1, 0, 0, 1)


def _display(frame: av.VideoFrame) -> Display:
    """The frame's display matrix (FFmpeg's 16.16 layout) rounded to a quarter turn, mirrored or not: what
    cameras and editors write. Phones store portrait video as landscape frames plus such a matrix, which
    decoding alone does not apply; a front camera's clip may also carry a mirror flip."""
    data = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
    if data is None:
        return UNCHANGED
    a, b, _, c, d = np.frombuffer(bytes(data), "<i4")[:5].astype(float)
    if abs(a) + abs(d) >= abs(b) + abs(c):
        return (1 if a >= 0 else -1, 0, 0, 1 if d >= 0 else -1)
    return (0, 1 if b >= 0 else -1, 1 if c >= 0 else -1, 0)


def _upright(image: np.ndarray, display: Display) -> np.ndarray:
    """The frame as players show it: each stored pixel (x, y) moved to (a·x + c·y, b·x + d·y)."""
    if display == UNCHANGED:
        return image
    a, b, c, d = display
    if a == 0:  # a quarter turn: rows become columns
        image, flip_rows, flip_columns = image.transpose(1, 0, 2), b < 0, c < 0
    else:
        flip_rows, flip_columns = d < 0, a < 0
    return np.ascontiguousarray(image[::-1 if flip_rows else 1, ::-1 if flip_columns else 1])


def iter_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Decoded frames as HxWx3 uint8 RGB, upright (display rotation and mirroring applied), in presentation order."""
    path = Path(path)
    count = 0
    with _open(path) as container:
        if not container.streams.video:
            raise UserError(f"{path}: has no video stream")
        try:
            for frame in container.decode(video=0):
                count += 1
                yield _upright(frame.to_ndarray(format="rgb24"), _display(frame))
        except av.FFmpegError as err:
            raise UserError(f"{path}: decoding failed after {count} frames ({err})") from None
    if count == 0:
        raise UserError(f"{path}: the video has no frames")


def read_video(path: str | Path) -> tuple[list[np.ndarray], Fraction]:
    """All frames (RGB uint8) and the frame rate; for short clips (long ones: iter_frames)."""
    return list(iter_frames(path)), video_info(path).fps


class _Soundtrack:
    """The source's first audio stream, added to `output` before any packet is written, muxed after video."""

    def __init__(self, source: Path, output: av.container.OutputContainer):
        self.container = _open(source)
        self.audio_in = self.container.streams.audio[0] if self.container.streams.audio else None
        self.copy = self.audio_in is not None and self.audio_in.codec_context.name in _MP4_AUDIO_COPY
        if self.audio_in is None:
            self.audio_out = None
        elif self.copy:
            self.audio_out = output.add_stream_from_template(self.audio_in)
        else:
            self.rate = self.audio_in.codec_context.sample_rate or 44100
            self.audio_out = output.add_stream("aac", rate=self.rate)

    def mux(self, output: av.container.OutputContainer) -> None:
        if self.audio_in is None:
            return
        if self.copy:
            for packet in self.container.demux(self.audio_in):
                if packet.dts is not None:
                    packet.stream = self.audio_out
                    output.mux(packet)
            return
        resampler = av.AudioResampler(format="fltp", layout=self.audio_in.codec_context.layout.name, rate=self.rate)
        for frame in self.container.decode(self.audio_in):
            for converted in resampler.resample(frame):
                output.mux(self.audio_out.encode(converted))
        output.mux(self.audio_out.encode(None))

    def close(self) -> None:
        self.container.close()


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float | Fraction,
    audio_from: str | Path | None = None,
    crf: int = 18,
    preset: str = "veryfast",
) -> Path:
    """Encode RGB uint8 frames to H.264 MP4 (yuv420p, even size), with `audio_from`'s soundtrack if any.
    x264's `veryfast` encodes 720p at 2.2x the speed of its `medium` default, files about as large at
    crf 18. Written to a temporary file first: an interrupted run never leaves a broken output."""
    path = Path(path)
    if path.suffix.lower() not in (".mp4", ".mov", ".m4v"):
        raise UserError(f"{path}: write videos as .mp4 (or .mov/.m4v)")
    rate = Fraction(fps).limit_denominator(1001)
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise UserError(f"{path}: no frames to write")

    def encode(temp: Path) -> None:
        with av.open(str(temp), mode="w", format="mp4") as output:
            stream = output.add_stream("libx264", rate=rate)
            height, width = first.shape[:2]
            stream.width, stream.height = width - width % 2, height - height % 2
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": preset}
            soundtrack = _Soundtrack(Path(audio_from), output) if audio_from is not None else None
            try:
                for image in _chain(first, iterator):
                    if image.shape[:2] != (height, width):
                        raise UserError(f"{path}: frame of size {image.shape[:2]} after frames of {(height, width)}")
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: stream.height, : stream.width], dtype=np.uint8), format="rgb24")
                    output.mux(stream.encode(frame))
                output.mux(stream.encode(None))
                if soundtrack is not None:
                    soundtrack.mux(output)
            finally:  # the source's container is closed on errors and interruptions too
                if soundtrack is not None:
                    soundtrack.close()

    return atomic_write(path, encode)


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


_DONE = object()


def _lower_priority(niceness: int) -> None:
    """Make the calling thread yield the CPU to the others by `niceness` (Linux: threads have nice values of
    their own, and threads it starts later inherit it; elsewhere nothing). Lowering needs no privileges."""
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + niceness))
    except OSError as err:  # a sandbox that forbids it: same work and result, only slower on few cores
        log.warning("could not lower a video thread's priority (%s): decoding and encoding share the CPU "
                    "equally with the swap", err)


def _hand_over(buffer: queue.Queue, item: object, stop: Callable[[], bool]) -> bool:
    """Put `item` unless the other side has stopped."""
    while not stop():
        try:
            buffer.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def read_ahead(items: Iterable[T], depth: int = 4, niceness: int = 0) -> Iterator[T]:
    """`items` produced by a background thread, up to `depth` ahead of the consumer: decoding, swapping and
    encoding (PyAV, ONNX Runtime and OpenCV release the GIL) then overlap. `niceness` lowers the producer's
    priority (see `_lower_priority`). An error in the producer is raised in the consumer; a consumer that stops
    early stops the producer."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            _lower_priority(niceness)
            for item in items:
                if not _hand_over(buffer, item, stop.is_set):
                    return
            _hand_over(buffer, _DONE, stop.is_set)
        except BaseException as err:  # handed to the consumer, which raises it
            _hand_over(buffer, err, stop.is_set)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while (item := buffer.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


class _Abandoned(Exception):
    """Raised inside a `consume_behind` consumer when the producing side failed or was interrupted."""


def _wait_through_interrupts(finished: threading.Event) -> None:
    """Wait for a worker even through Ctrl-C (it is finishing or removing a file); the interrupt comes after.
    On its Event, not Thread.join: an interrupted join marks a running thread as stopped (CPython 3.11)."""
    interrupted = False
    while not finished.is_set():
        try:
            finished.wait()
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt


def consume_behind(consume: Callable[[Iterator[T]], R], items: Iterable[T], depth: int = 4, niceness: int = 0) -> R:
    """`consume(items)` (an encoder) on a background thread at lower priority (`niceness`), while this thread
    produces the items, up to `depth` ahead: on a CPU with fewer cores than busy threads, the producer (the swap,
    the slowest stage) keeps its share. An error on either side is raised here, always after the consumer has
    ended: when the producer fails or is interrupted, `consume` sees an exception at its next item (an atomic
    writer then leaves nothing behind); after the last item it finishes its work."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    outcome: dict[str, object] = {}
    finished, abandoned = threading.Event(), threading.Event()

    def drain() -> Iterator[T]:
        while not abandoned.is_set():
            try:
                item = buffer.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _DONE:
                return
            yield item
        raise _Abandoned("the frames stopped coming")

    def run() -> None:
        try:
            _lower_priority(niceness)
            outcome["result"] = consume(drain())
        except BaseException as err:
            outcome["error"] = err
        finally:
            finished.set()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        for item in items:
            if not _hand_over(buffer, item, finished.is_set):
                break  # the consumer ended early (its error is raised below)
        else:
            _hand_over(buffer, _DONE, finished.is_set)
    except BaseException:
        abandoned.set()
        _wait_through_interrupts(finished)
        raise
    _wait_through_interrupts(finished)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]
