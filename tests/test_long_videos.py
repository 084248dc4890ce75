"""Long videos as YouTube serves them (GOPs of 2-10 s, B-frames, clips far apart): decoding cost, exactness.

The videos here are a few seconds long with a long GOP, so that a cost that depends on where the frames lie
shows in the count of decoded frames, not in timings.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from clipbert.data.decoders import pyav
from clipbert.data.painted import paint_index, read_index, write_painted_video


class _CountingContainer:
    """A PyAV input container that counts the frames decoded through it."""

    def __init__(self, container, counter: list[int]):
        self._container, self._counter = container, counter

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._container.close()

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            self._counter[0] += 1
            yield frame


@pytest.fixture
def decoded_frames(monkeypatch) -> list[int]:
    """[count] of frames PyAVDecoder.decode decodes (probes excluded: they open files on their own)."""
    counter, open_video = [0], pyav.open_video

    def counting_open(key):
        return _CountingContainer(open_video(key), counter)

    decoder_decode = pyav.PyAVDecoder.decode

    def decode(self, key, indices):
        self._probe_cached(key)  # probe with the real container, so that only decoding counts
        monkeypatch.setattr(pyav, "open_video", counting_open)
        try:
            return decoder_decode(self, key, indices)
        finally:
            monkeypatch.setattr(pyav, "open_video", open_video)

    monkeypatch.setattr(pyav.PyAVDecoder, "decode", decode)
    return counter


def _painted_indices(frames: np.ndarray) -> np.ndarray:
    """uint8 [N, T, H, W, 3] -> int [N, T] painted indices."""
    return np.vectorize(lambda n, t: read_index(frames[n, t]))(*np.indices(frames.shape[:2]))


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_a_clip_within_one_gop_decodes_on_instead_of_seeking_back(tmp_path, codec, decoded_frames):
    # A 2-frame clip of 1 s at 30 fps: frames 29 apart, more than SEEK_GAP_FRAMES, with no key frame
    # between them (YouTube's GOPs are 2-10 s). Seeking for the second frame went back to the key frame of
    # the first and decoded 0..20 twice.
    path = write_painted_video(tmp_path / "v", 120, fps=30, codec=codec, gop=100)
    indices = np.array([[20, 49]])
    frames = pyav.PyAVDecoder().decode(path, indices)
    np.testing.assert_array_equal(_painted_indices(frames), indices)
    assert decoded_frames[0] <= 49 + 1 + 4  # frames 0..49, and a few the decoder holds back (B-frames)


def test_a_low_rate_frame_store_decodes_each_frame_once(tmp_path, decoded_frames):
    # The frame store at 1 fps from 30 fps (30 frames apart) sought back to key frame 0 for every stored
    # frame: 1 + 31 + 61 + 91 frames for 4 stored, where one pass decodes 91.
    from clipbert.data.build_frame_store import _encode_entry

    path = write_painted_video(tmp_path / "v", 120, fps=30, gop=120)
    entry = _encode_entry(path, 1.0, 0, 95)
    assert entry["source_index"].tolist() == [0, 30, 60, 90]
    assert decoded_frames[0] <= 91 + 4


def _write_offset_video(path: str, num_frames: int, start_s: float, codec: str, gop: int) -> str:
    """Painted frames 0.. at 30 fps whose first timestamp is `start_s` (a clip cut from a longer stream)."""
    encoder, options = {
        "h264": ("libx264", {"crf": "18", "preset": "ultrafast", "bf": "3"}),
        "vp9": ("libvpx-vp9", {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
    }[codec]
    time_base = Fraction(1, 300)
    with av.open(path, "w") as container:
        stream = container.add_stream(encoder, rate=Fraction(30))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.time_base = stream.codec_context.time_base = time_base
        stream.options = options
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(paint_index(index, 48, 64), format="rgb24")
            frame.pts, frame.time_base = round(start_s * 300) + 10 * index, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.mark.parametrize("suffix, codec", [(".mp4", "h264"), (".mkv", "h264"), (".webm", "vp9")])
def test_frames_are_exact_across_key_frames_with_b_frames_and_a_late_start(tmp_path, suffix, codec):
    # Gaps under and over SEEK_GAP_FRAMES, with and without a key frame (every 40) in them, decoded in one
    # sample; the stream starts at 7.5 s, as a clip cut from a longer video does.
    path = _write_offset_video(str(tmp_path / f"v{suffix}"), 200, 7.5, codec, gop=40)
    decoder = pyav.PyAVDecoder()
    info, clock = decoder._probe_cached(path)
    assert info.num_frames == 200 and clock.start > 0
    indices = np.array([[0, 29], [35, 45], [50, 79], [81, 120], [150, 199]])
    frames = decoder.decode(path, indices)
    np.testing.assert_array_equal(_painted_indices(frames), indices)


def test_a_stream_without_key_flags_still_seeks_over_long_gaps():
    # No key frame known (keys None): every gap over SEEK_GAP_FRAMES seeks, as before key frames were read.
    clock = pyav.FrameClock(0, 1 / 30, 30.0)
    assert clock.key_within(5, 100)
    keyed = pyav.FrameClock(0, 1 / 30, 30.0, keys=np.array([0, 100]))
    assert not keyed.key_within(5, 99) and keyed.key_within(5, 100) and not keyed.key_within(100, 150)


def test_the_probe_reads_the_key_frames_of_a_long_gop(tmp_path):
    path = write_painted_video(tmp_path / "v", 120, fps=30, gop=100)
    assert pyav.PyAVDecoder()._probe_cached(path)[1].keys.tolist() == [0, 100]
