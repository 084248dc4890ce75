"""Test videos with each frame's index painted in as a bar code of big blocks, readable despite codec loss.

Used by the tests and the data benchmark; `write_painted_video` needs only PyAV.
"""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np

GRID_ROWS, GRID_COLS = 3, 4  # 12 bits: indices up to 4095
CODECS = {  # codec name -> (PyAV encoder, container suffix, pixel format)
    "h264": ("libx264", ".mp4", "yuv420p"),
    "vp9": ("libvpx-vp9", ".webm", "yuv420p"),
    "mjpeg": ("mjpeg", ".avi", "yuvj420p"),
    "gif": ("gif", ".gif", "rgb8"),
}
ENCODER_OPTIONS = {  # fast, near-lossless; H.264 with B-frames so that decode order differs from display
    "h264": {"crf": "18", "preset": "ultrafast", "bf": "2"},
    "vp9": {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"},
}


def paint_index(index: int, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3]: bit k of `index` is block k of a 3 x 4 grid (white = 1), on a coloured ramp."""
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    frame[..., 2] = np.linspace(0, 90, width, dtype=np.uint8)[None, :]  # a blue ramp keeps resizes honest
    for bit in range(GRID_ROWS * GRID_COLS):
        if (index >> bit) & 1:
            r, c = divmod(bit, GRID_COLS)
            rows = slice(r * height // GRID_ROWS, (r + 1) * height // GRID_ROWS)
            cols = slice(c * width // GRID_COLS, (c + 1) * width // GRID_COLS)
            frame[rows, cols, :2] = 255
    return frame


def read_index(frame: np.ndarray) -> int:
    """The index painted into an RGB uint8 [H, W, 3] frame (reads the centre of each block)."""
    height, width = frame.shape[:2]
    value = 0
    for bit in range(GRID_ROWS * GRID_COLS):
        r, c = divmod(bit, GRID_COLS)
        y = int((r + 0.5) * height / GRID_ROWS)
        x = int((c + 0.5) * width / GRID_COLS)
        if frame[y, x, 0] > 127:
            value |= 1 << bit
    return value


def _target(path: str | os.PathLike, codec: str) -> tuple[str, str, str]:
    """(path with the codec's suffix, PyAV encoder, pixel format); ValueError naming an unknown codec."""
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}; got {codec!r}")
    encoder, suffix, pix_fmt = CODECS[codec]
    path = os.fspath(path)
    return (path if path.endswith(suffix) else path + suffix), encoder, pix_fmt


def write_painted_video(
    path: str | os.PathLike,
    num_frames: int,
    fps: int = 10,
    height: int = 48,
    width: int = 64,
    codec: str = "h264",
    gop: int = 12,
    rotation: int = 0,
) -> str:
    """Encode frames 0..num_frames-1 with their index painted in; returns the path (suffix by codec).

    `rotation`: a display matrix turning the picture that many degrees counterclockwise, as a phone's
    portrait recording has (the usual -90 writes the MP4 tkhd matrix (0, 1, 0, -1, 0, 0, 0, 0, 1)).
    """
    path, encoder, pix_fmt = _target(path, codec)
    with av.open(path, "w") as container:
        stream = container.add_stream(encoder, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        stream.codec_context.gop_size = gop
        stream.options = ENCODER_OPTIONS.get(codec, {})
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(paint_index(index, height, width), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_vfr_video(path: str | os.PathLike, delays_ms: list[int], codec: str = "gif") -> str:
    """A variable-frame-rate video: frame k, painted with k, is shown for delays_ms[k] milliseconds (GIFs
    and phone recordings are like this). Frame k is then the k-th in presentation order, not the frame at
    k / fps seconds. Returns the path (suffix by codec)."""
    path, encoder, pix_fmt = _target(path, codec)
    time_base = Fraction(1, 1000)
    with av.open(path, "w") as container:
        stream = container.add_stream(encoder, rate=Fraction(10))  # nominal; the timestamps say otherwise
        stream.height, stream.width, stream.pix_fmt = 48, 64, pix_fmt
        stream.time_base = stream.codec_context.time_base = time_base
        stream.options = ENCODER_OPTIONS.get(codec, {})
        pts = 0
        for index, delay in enumerate(delays_ms):
            frame = av.VideoFrame.from_ndarray(paint_index(index, 48, 64), format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            pts += delay
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_edit_list_video(path: str | os.PathLike, num_frames: int, hidden: int, codec: str = "vp9") -> str:
    """An MP4 whose edit list starts the video at painted frame `hidden`: the first `hidden` packets decode
    (later frames may reference them) but are never shown, and FFmpeg flags them discard. Shown frame k is
    painted with k + hidden. Made by shifting a painted video's timestamps below zero; returns the path."""
    source = write_painted_video(os.fspath(path) + "_src", num_frames, codec=codec)
    path = os.fspath(path)
    if not path.endswith(".mp4"):
        path += ".mp4"
    with av.open(source) as src, av.open(path, "w") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        out.time_base = stream.time_base
        packets = [p for p in src.demux(stream) if p.dts is not None]
        shift = hidden * (packets[1].pts - packets[0].pts)
        for packet in packets:
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = out
            dst.mux(packet)
    os.remove(source)
    return path


def write_resizing_video(path: str | os.PathLike, sizes: list[tuple[int, int]], fps: int = 10) -> str:
    """An MJPEG .mkv whose frame k is painted with k at size sizes[k] = (height, width); returns the path.

    MJPEG packets are whole JPEGs, so one encoder per size muxed into one stream makes a video whose frame
    size changes mid-stream (as spliced or resolution-switching files do), which decoders must reject.
    """
    path = os.fspath(path)
    if not path.endswith(".mkv"):
        path += ".mkv"
    time_base = Fraction(1, fps)
    with av.open(path, "w") as container:
        stream = container.add_stream("mjpeg", rate=Fraction(fps))
        stream.height, stream.width = sizes[0]
        stream.pix_fmt, stream.time_base = "yuvj420p", time_base
        encoders: dict[tuple[int, int], av.CodecContext] = {}
        for index, (height, width) in enumerate(sizes):
            encoder = encoders.get((height, width))
            if encoder is None:
                encoder = encoders[height, width] = av.CodecContext.create("mjpeg", "w")
                encoder.height, encoder.width, encoder.pix_fmt = height, width, "yuvj420p"
                encoder.time_base = time_base
            frame = av.VideoFrame.from_ndarray(paint_index(index, height, width), format="rgb24")
            frame.pts = index
            for packet in encoder.encode(frame):
                packet.stream, packet.time_base = stream, time_base
                packet.pts = packet.dts = index
                container.mux(packet)
    return path


def zero_payloads(path: str | os.PathLike, first: int) -> None:
    """Zero the data of packets `first`.. in place: the container (chunks, index) stays intact and still
    demuxes, but those frames do not decode (a bad video that passes every probe)."""
    with av.open(str(path)) as container:
        spans = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    with open(path, "r+b") as f:
        for pos, size in spans[first:]:
            f.seek(pos)
            f.write(bytes(size))


def write_audio_only(path: str | os.PathLike, frames: int = 4, rate: int = 16000) -> str:
    """An mp4 with one silent AAC stream and no video stream: a file every decoder must report, not read."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        for i in range(frames):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)
