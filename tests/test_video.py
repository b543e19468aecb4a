from fractions import Fraction

import av
import numpy as np
import pytest

from facekit.errors import UserError
from facekit.faces.video import iter_frames, read_video, video_info, write_video


def _make_clip(path, frames=12, fps=10, audio_codec="aac", with_video=True):
    """A small MP4 with a moving square and a 440 Hz tone of the same duration."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps) if with_video else None
        if video is not None:
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        rate = 16000
        audio = container.add_stream(audio_codec, rate=rate)
        audio.layout = "mono"
        if video is not None:
            for i in range(frames):
                image = np.full((48, 64, 3), 30, np.uint8)
                image[10:30, 4 * i: 4 * i + 20] = (250, 40, 40)
                container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(video.encode(None))
        samples = np.sin(2 * np.pi * 440 * np.arange(int(rate * frames / fps)) / rate).astype(np.float32)
        fmt = "fltp" if audio_codec == "aac" else "s16"
        data = samples[None] if fmt == "fltp" else (samples * 20000).astype(np.int16)[None]
        for start in range(0, data.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, start:start + 1024]), format=fmt, layout="mono")
            frame.sample_rate = rate
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))


def _audio_seconds(path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return sum(f.samples for f in container.decode(stream)) / stream.codec_context.sample_rate


@pytest.mark.parametrize("audio_codec", ["aac", "pcm_s16le"])
def test_frames_roundtrip_and_the_soundtrack_is_kept(tmp_path, audio_codec):
    source = tmp_path / ("clip.mp4" if audio_codec == "aac" else "clip.mov")
    _make_clip(source, audio_codec=audio_codec)
    frames, fps = read_video(source)
    assert len(frames) == 12 and fps == Fraction(10) and frames[0].shape == (48, 64, 3)
    edited = [255 - f for f in frames]
    out = write_video(tmp_path / "out.mp4", edited, fps, audio_from=source)
    info = video_info(out)
    assert info.has_audio and info.fps == 10 and (info.width, info.height) == (64, 48)
    back = list(iter_frames(out))
    assert len(back) == 12
    assert np.abs(back[5].astype(int) - edited[5]).mean() < 6
    assert abs(_audio_seconds(out) - _audio_seconds(source)) < 0.1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_odd_sizes_are_cropped_to_even_and_silent_output_has_no_audio(tmp_path):
    out = write_video(tmp_path / "odd.mp4", [np.zeros((33, 51, 3), np.uint8)] * 3, 25)
    info = video_info(out)
    assert (info.width, info.height) == (50, 32) and not info.has_audio


ONE = 65536  # 1.0 in a display matrix's 16.16 fixed point


@pytest.mark.parametrize("rotation, matrix, show", [
    (-90, None, lambda im: np.rot90(im, -1)),  # counter-clockwise degrees, as players show it
    (90, None, lambda im: np.rot90(im, 1)),
    (180, None, lambda im: np.rot90(im, 2)),
    (None, [-ONE, 0, 0, 0, ONE, 0, 0, 0, 1 << 30], lambda im: im[:, ::-1]),  # a front camera's mirror
    (None, [ONE, 0, 0, 0, -ONE, 0, 0, 0, 1 << 30], lambda im: im[::-1]),
    (None, [0, ONE, 0, ONE, 0, 0, 0, 0, 1 << 30], lambda im: im.transpose(1, 0, 2)),  # a quarter turn, mirrored
])
def test_phone_videos_are_read_upright(tmp_path, rotation, matrix, show):
    """A portrait phone clip is stored as landscape frames plus a display matrix (a rotation, sometimes a
    mirror); faces are only found, and the swap is only written the right way up, once it is applied, as
    FFmpeg's players apply it."""
    stored = np.full((48, 64, 3), 30, np.uint8)
    stored[:16, :8] = 250  # a bright patch shows where the frame's top-left went
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        if matrix is None:
            video.set_display_rotation(rotation)
        else:
            video.set_display_matrix(matrix)
        for _ in range(3):
            container.mux(video.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        container.mux(video.encode(None))
    frames, _ = read_video(path)
    shown = show(stored)
    assert frames[0].shape == shown.shape
    assert np.abs(frames[0].astype(int) - shown).mean() < 3  # x264's loss only
    info = video_info(path)
    assert (info.height, info.width) == shown.shape[:2]
    again = video_info(write_video(tmp_path / "swapped.mp4", frames, 10))  # written upright, no rotation left
    assert (again.height, again.width) == shown.shape[:2]
    assert np.abs(read_video(tmp_path / "swapped.mp4")[0][0].astype(int) - shown).mean() < 3


def test_bad_videos_are_user_errors(tmp_path):
    audio_only = tmp_path / "audio.mp4"
    _make_clip(audio_only, with_video=False)
    with pytest.raises(UserError, match="no video stream"):
        read_video(audio_only)
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="junk.mp4"):
        read_video(tmp_path / "junk.mp4")
    with pytest.raises(UserError, match="no frames"):
        write_video(tmp_path / "empty.mp4", [], 25)
    assert not (tmp_path / "empty.mp4").exists()
