"""Write frames to real, byte-reproducible video files with PyAV (libx264 / libvpx-vp9 / mjpeg)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np

CODECS: dict[str, dict] = {
    "h264": {
        "ext": "mp4",
        "encoder": "libx264",
        "pix_fmt": "yuv420p",
        "options": {"preset": "ultrafast", "crf": "18"},
    },
    "vp9": {
        "ext": "webm",
        "encoder": "libvpx-vp9",
        "pix_fmt": "yuv420p",
        # realtime + cpu-used 8 keeps VP9 within the generation budget; crf mode needs b=0.
        "options": {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "crf": "24", "b": "0"},
    },
    "mjpeg": {"ext": "avi", "encoder": "mjpeg", "pix_fmt": "yuvj420p", "options": {"q:v": "3"}},
}


KEYFRAME_SECONDS = 1.0

# BT.601 RGB -> Y (with offset), Cb, Cr integer coefficients (x256): limited range (video), full (JPEG).
_LIMITED = ((66, 129, 25, 16), (-38, -74, 112), (112, -94, -18))
_FULL = ((77, 150, 29, 0), (-43, -85, 128), (128, -107, -21))


def rgb_to_yuv420(chunk: np.ndarray, full_range: bool) -> np.ndarray:
    """uint8 RGB [f, H, W, 3] (even H, W) -> planar YUV 4:2:0 as PyAV wants it, [f, H * 3 / 2, W] uint8.

    Integer BT.601, so the bytes are the same on every machine. The renderer converts only each video's
    static background this way and paints the flat-coloured objects into the planes directly.
    """
    (yr, yg, yb, y_offset), cb, cr = _FULL if full_range else _LIMITED
    f, h, w, _ = chunk.shape
    rgb = chunk.astype(np.uint16)  # [f, H, W, 3]
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = (yr * r + yg * g + yb * b + 128) >> 8  # fits uint16: Y coefficients are >= 0 and sum to <= 256
    quad = rgb[:, 0::2, 0::2] + rgb[:, 1::2, 0::2] + rgb[:, 0::2, 1::2] + rgb[:, 1::2, 1::2]
    quad = quad.astype(np.int32)  # [f, H/2, W/2, 3] sums over 2x2 blocks (chroma is subsampled)
    qr, qg, qb = quad[..., 0], quad[..., 1], quad[..., 2]
    out = np.empty((f, h * w * 3 // 2), dtype=np.uint8)  # Y plane, then U, then V, each row-major
    out[:, : h * w] = (y + y_offset).reshape(f, -1)
    for k, start in ((cb, h * w), (cr, h * w * 5 // 4)):
        c = ((k[0] * qr + k[1] * qg + k[2] * qb + 512) >> 10) + 128  # >> 10: / 4 pixels / 256
        out[:, start : start + h * w // 4] = np.clip(c, 0, 255).reshape(f, -1)
    return out.reshape(f, h * 3 // 2, w)


def rgb_to_ycbcr(rgb: np.ndarray, full_range: bool) -> np.ndarray:
    """uint8 RGB colours [n, 3] -> Y, Cb, Cr [n, 3] uint8 with the same integer BT.601 as `rgb_to_yuv420`."""
    (yr, yg, yb, y_offset), cb, cr = _FULL if full_range else _LIMITED
    x = rgb.astype(np.int32)
    y = ((yr * x[:, 0] + yg * x[:, 1] + yb * x[:, 2] + 128) >> 8) + y_offset
    cols = [y] + [((k[0] * x[:, 0] + k[1] * x[:, 1] + k[2] * x[:, 2] + 128) >> 8) + 128 for k in (cb, cr)]
    return np.clip(np.stack(cols, axis=1), 0, 255).astype(np.uint8)


def pix_fmt(codec: str) -> str:
    """Encoder input format; "yuvj420p" (MJPEG) is full range, "yuv420p" limited."""
    return CODECS[codec]["pix_fmt"]


def video_extension(codec: str) -> str:
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r} not one of {sorted(CODECS)}")
    return CODECS[codec]["ext"]


def write_video(path: str | Path, chunks: Iterable[np.ndarray], fps: int, codec: str) -> int:
    """Encode planar YUV 4:2:0 chunks [f, H * 3 / 2, W] uint8 (see `pix_fmt` / `rgb_to_yuv420`) to `path`.

    Returns the number of frames written. H and W must be even.

    One encoder thread and the `bitexact` flags keep the output bytes a pure function of the frames
    (no encoder-version or timestamp metadata, no thread-order dependence).
    """
    spec = CODECS.get(codec)
    if spec is None:
        raise ValueError(f"codec {codec!r} not one of {sorted(CODECS)}")
    count = 0
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(spec["encoder"], rate=fps)
        stream.pix_fmt = spec["pix_fmt"]
        stream.thread_count = 1
        stream.options = dict(spec["options"])
        # A key frame every second: sparse clip sampling seeks to random times, and each seek decodes from
        # the key frame before it (with x264's default of 250 frames, most videos would have just one).
        stream.codec_context.gop_size = max(1, round(float(fps) * KEYFRAME_SECONDS))
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for chunk in chunks:
            if count == 0:
                height, width = chunk.shape[1] * 2 // 3, chunk.shape[2]
                if height % 2 or width % 2 or chunk.shape[1] % 3:
                    raise ValueError(
                        f"{path}: frame size {width}x{height} must be even for {spec['pix_fmt']}"
                    )
                stream.width, stream.height = width, height
            chunk = np.ascontiguousarray(chunk)
            for frame in chunk:
                # Wraps the numpy memory without a copy; the chunk stays alive and unmodified while the
                # encoder may still hold the frame (lookahead).
                packets = stream.encode(av.VideoFrame.from_numpy_buffer(frame, format=spec["pix_fmt"]))
                container.mux(packets)
                count += 1
        container.mux(stream.encode())
    return count
