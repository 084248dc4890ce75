"""Exact CPU decoding with PyAV: seek to the key frame before each wanted frame and decode forward.

Frames are identified by their presentation time (index = round(pts * time_base * fps)), so the result is
exact for constant-frame-rate videos whatever the GOP, B-frames or container.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import av
import numpy as np

from .base import VideoDecodeError, VideoInfo, check_indices

# Decoding forward is cheaper than a seek (which restarts at a key frame) when the gap is small.
SEEK_GAP_FRAMES = 16
# Container frame counts can exceed the decodable frames by a frame or two (edit lists, a short last
# packet); the last decoded frame stands in for those instead of failing the whole video.
EDGE_TOLERANCE_FRAMES = 2


class PyAVDecoder:
    """`threads`: FFmpeg threads per open video (0 = one per core). Keep 1 when processes run in parallel:
    frame threading delays output by a frame per thread and refills after every seek."""

    def __init__(self, probe_cache_size: int = 4096, threads: int = 1):
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self._infos: OrderedDict[str, VideoInfo] = OrderedDict()
        self._cache_size = probe_cache_size
        self.threads = threads

    def probe(self, key: str) -> VideoInfo:
        info = self._infos.get(key)
        if info is None:
            with open_video(key) as container:
                info = _probe(key, container)
            self._infos[key] = info
            while len(self._infos) > self._cache_size:
                self._infos.popitem(last=False)
        return info

    def decode(self, key: str, indices: np.ndarray) -> np.ndarray:
        info = self.probe(key)
        indices = check_indices(key, indices, info.num_frames)
        with open_video(key) as container:
            wanted = sorted(set(indices.ravel().tolist()))
            frames = _decode_wanted(key, container, wanted, info.fps, self.threads)
        return _stack_frames(key, frames, indices)


def _stack_frames(key: str, frames: dict[int, np.ndarray], indices: np.ndarray) -> np.ndarray:
    """{index: uint8 [H, W, 3]} -> uint8 [N, T, H, W, 3] in the order of `indices` [N, T].

    Why the check: a stream may change its frame size midway (a resolution switch, a spliced file); np.stack
    would raise a bare ValueError, which kills a DataLoader worker instead of replacing the video.
    """
    by_shape: dict[tuple, int] = {}  # frame shape -> first wanted index of that shape
    for index in sorted(frames):
        by_shape.setdefault(frames[index].shape, index)
    if len(by_shape) > 1:
        (shape0, at0), (shape1, at1) = list(by_shape.items())[:2]
        raise VideoDecodeError(
            key,
            f"frame size changes mid-stream ({shape0[0]}x{shape0[1]} at frame {at0}, "
            f"{shape1[0]}x{shape1[1]} at frame {at1})",
        )
    stacked = np.stack([frames[i] for i in indices.ravel()])  # [N*T, H, W, 3]
    return stacked.reshape(*indices.shape, *stacked.shape[1:])


def open_video(key: str):
    """The PyAV container of a readable video file; VideoDecodeError naming the file and why otherwise."""
    if not os.path.isfile(key):
        raise VideoDecodeError(key, "missing file")
    if os.path.getsize(key) == 0:
        raise VideoDecodeError(key, "empty file")
    try:
        container = av.open(key)
    except (av.FFmpegError, ValueError, OSError) as err:
        raise VideoDecodeError(key, f"cannot open container ({err})") from err
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(key, "no video stream")
    return container


def _probe(key: str, container) -> VideoInfo:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    if not rate or rate <= 0:
        raise VideoDecodeError(key, "unknown frame rate")
    num_frames = stream.frames
    if num_frames <= 0:  # webm and some others do not store a count: count the packets (no decoding)
        try:
            num_frames = sum(1 for p in container.demux(stream) if p.size > 0 and p.pts is not None)
        except av.FFmpegError as err:
            raise VideoDecodeError(key, f"cannot demux ({err})") from err
    if num_frames <= 0:
        raise VideoDecodeError(key, "no frames")
    ctx = stream.codec_context
    return VideoInfo(int(num_frames), float(rate), int(ctx.height), int(ctx.width), str(ctx.name))


def _decode_wanted(key: str, container, wanted: list[int], fps: float, threads: int) -> dict[int, np.ndarray]:
    stream = container.streams.video[0]
    stream.codec_context.thread_count = threads
    stream.thread_type = "SLICE" if threads == 1 else "AUTO"
    time_base = float(stream.time_base)
    start = stream.start_time or 0
    wanted_set, frames = set(wanted), {}
    position, last_frame, frame_iter = None, None, None  # last decoded index and frame; the decoder
    try:
        for target in wanted:
            if target in frames:
                continue
            if position is None or target <= position or target - position > SEEK_GAP_FRAMES:
                pts = start + int(target / fps / time_base)
                container.seek(pts, stream=stream, backward=True, any_frame=False)
                frame_iter = container.decode(stream)
            decoded = _decode_until(frame_iter, target, wanted_set, frames, start, time_base, fps)
            if decoded[0] is not None:
                position, last_frame = decoded
            if target in frames:
                continue
            if position is None or position < target:  # the stream ended first
                if last_frame is None or target - position > EDGE_TOLERANCE_FRAMES:
                    raise VideoDecodeError(key, f"frame {target} missing: stream ends at frame {position}")
                frames[target] = last_frame.to_ndarray(format="rgb24")
                continue
            # the seek landed past the target: decode from the start instead
            container.seek(start, stream=stream, backward=True, any_frame=False)
            frame_iter = container.decode(stream)
            position, last_frame = _decode_until(
                frame_iter, target, wanted_set, frames, start, time_base, fps
            )
            if target not in frames:
                raise VideoDecodeError(key, f"frame {target} not found by its timestamp")
    except av.FFmpegError as err:
        raise VideoDecodeError(key, f"decoding failed ({err})") from err
    return frames


def _decode_until(frame_iter, target, wanted_set, frames, start, time_base, fps):
    """Decode forward until frame `target` is reached; keep every wanted frame.

    Returns (index, frame) of the last decoded frame, (None, None) if the stream had no more frames.
    """
    position, last = None, None
    for frame in frame_iter:
        if frame.pts is None:
            continue
        position, last = int(round((frame.pts - start) * time_base * fps)), frame
        if position in wanted_set and position not in frames:
            frames[position] = frame.to_ndarray(format="rgb24")
        if position >= target:
            break
    return position, last
