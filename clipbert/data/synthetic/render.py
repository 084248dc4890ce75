"""Vectorised numpy renderer: ground-truth scene dict -> uint8 RGB frames [F, H, W, 3]."""

from __future__ import annotations

import math

import numpy as np

from .encode import rgb_to_ycbcr, rgb_to_yuv420
from .scene import colors_rgb, positions

CHUNK = 64  # frames rendered at once: bounds the [chunk, H, W, 3] frame buffer


def background(scene: dict) -> np.ndarray:
    """Static background: gradient between two dark colours plus smooth noise -> [H, W, 3] uint8."""
    bg = scene["background"]
    height, width = scene["height"], scene["width"]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = bg["gradient_angle"]
    proj = xs * math.cos(angle) + ys * math.sin(angle)
    proj = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)  # [H, W] in [0, 1]
    c0, c1 = (np.asarray(c, np.float32) for c in bg["corner_colors"])
    img = c0 + proj[..., None] * (c1 - c0)  # [H, W, 3]
    img += _upsample_bilinear(np.asarray(bg["noise_grid"], np.float32), height, width)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _upsample_bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """[g, g, C] coarse grid -> [height, width, C], corners aligned."""
    g = grid.shape[0]
    gy = np.linspace(0, g - 1, height, dtype=np.float32)
    gx = np.linspace(0, g - 1, width, dtype=np.float32)
    y0, x0 = np.minimum(gy.astype(int), g - 2), np.minimum(gx.astype(int), g - 2)
    wy, wx = (gy - y0)[:, None, None], (gx - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x0 + 1] * wx
    bottom = grid[y0 + 1][:, x0] * (1 - wx) + grid[y0 + 1][:, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Pixels inside `shape` of radius `r`, given offsets from its centre (any matching shapes) -> bool."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * r
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.15 * r
    if shape == "triangle":  # apex up, base at 0.75 r below the centre
        return (dy <= 0.75 * r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "cross":
        ax, ay = np.abs(dx), np.abs(dy)
        return ((ax <= 0.3 * r) & (ay <= r)) | ((ay <= 0.3 * r) & (ax <= r))
    raise ValueError(f"render: unknown shape {shape!r}")


def render_frames(scene: dict, frame_indices: np.ndarray, bg: np.ndarray | None = None) -> np.ndarray:
    """Render the frames `frame_indices` [F] of `scene` -> RGB [F, H, W, 3] uint8.

    Static distractors are part of `bg` (see `painted_background`); the moving objects are painted in
    order second, main, so the main object is never occluded.
    """
    bg = painted_background(scene) if bg is None else bg
    times = np.asarray(frame_indices, dtype=np.float64) / scene["fps"]  # [F]
    frames = np.repeat(bg[None], len(times), axis=0)  # [F, H, W, 3]
    for obj in _moving_objects(scene):
        _paint(frames, scene, obj, times, 1.0, colors_rgb(obj, times))
    return frames


def render_yuv420(scene: dict, frame_indices: np.ndarray, bg_planes, full_range: bool) -> np.ndarray:
    """Render straight into planar YUV 4:2:0 -> [F, H * 3 / 2, W] uint8 (the encoder's input layout).

    Only the static background goes through `rgb_to_yuv420`; the flat-coloured moving objects are painted
    into the Y plane at full and into the U, V planes at half resolution (each chroma sample takes the
    colour at its 2x2 block centre). Per-frame colour conversion would cost more than the encoding.
    """
    bg_y, bg_uv = bg_planes  # [H, W], [H/2, W/2, 2]
    times = np.asarray(frame_indices, dtype=np.float64) / scene["fps"]  # [F]
    plane_y = np.repeat(bg_y[None, :, :, None], len(times), axis=0)  # [F, H, W, 1]
    plane_uv = np.repeat(bg_uv[None], len(times), axis=0)  # [F, H/2, W/2, 2]
    for obj in _moving_objects(scene):
        ycc = rgb_to_ycbcr(colors_rgb(obj, times), full_range)  # [F, 3]
        _paint(plane_y, scene, obj, times, 1.0, ycc[:, :1])
        _paint(plane_uv, scene, obj, times, 0.5, ycc[:, 1:])
    f, h, w = len(times), scene["height"], scene["width"]
    out = np.empty((f, h * w * 3 // 2), dtype=np.uint8)  # Y plane, then U, then V, each row-major
    out[:, : h * w] = plane_y.reshape(f, -1)
    out[:, h * w : h * w * 5 // 4] = plane_uv[..., 0].reshape(f, -1)
    out[:, h * w * 5 // 4 :] = plane_uv[..., 1].reshape(f, -1)
    return out.reshape(f, h * 3 // 2, w)


def _moving_objects(scene: dict) -> list[dict]:
    order = {"second": 0, "main": 1}  # painted last = on top
    return sorted((o for o in scene["objects"] if o["role"] in order), key=lambda o: order[o["role"]])


def painted_background(scene: dict) -> np.ndarray:
    """Background with the static distractors painted in -> [H, W, 3] uint8."""
    img = background(scene)[None].copy()  # [1, H, W, 3]
    for obj in scene["objects"]:
        if obj["role"] == "distractor":
            _paint(img, scene, obj, np.zeros(1), 1.0, colors_rgb(obj, np.zeros(1)))
    return img[0]


def background_yuv420(scene: dict, full_range: bool) -> tuple[np.ndarray, np.ndarray]:
    """Painted background as planes: Y [H, W] and interleaved chroma [H/2, W/2, 2], uint8."""
    h, w = scene["height"], scene["width"]
    flat = rgb_to_yuv420(painted_background(scene)[None], full_range).reshape(-1)
    y = flat[: h * w].reshape(h, w)
    u = flat[h * w : h * w * 5 // 4].reshape(h // 2, w // 2)
    v = flat[h * w * 5 // 4 :].reshape(h // 2, w // 2)
    return y, np.stack([u, v], axis=-1)


def _paint(
    frames: np.ndarray, scene: dict, obj: dict, times: np.ndarray, scale: float, values: np.ndarray
) -> None:
    """Paint `obj` into `frames` [F, h, w, C] at `times` [F] with `values` [F, C], only inside its box.

    `scale` maps scene pixels to this plane's pixels (0.5 for subsampled chroma).
    """
    cx, cy, present = positions(obj, scene, times)  # [F] each
    idx = np.flatnonzero(present)
    if len(idx) == 0:
        return
    cx, cy, r = cx[idx] * scale, cy[idx] * scale, obj["radius"] * scale
    height, width = frames.shape[1:3]
    box = int(math.ceil(2 * r)) + 3  # box side covering the shape wherever its centre falls
    steps = np.arange(box)
    xs = (np.floor(cx - r).astype(np.int64) - 1)[:, None] + steps  # [f, box] pixel columns
    ys = (np.floor(cy - r).astype(np.int64) - 1)[:, None] + steps  # [f, box] pixel rows
    dx = (xs + 0.5 - cx[:, None])[:, None, :]  # [f, 1, box] offsets of pixel centres
    dy = (ys + 0.5 - cy[:, None])[:, :, None]  # [f, box, 1]
    inside_x = ((xs >= 0) & (xs < width))[:, None, :]
    inside_y = ((ys >= 0) & (ys < height))[:, :, None]
    mask = shape_mask(obj["shape"], dx, dy, r) & inside_x & inside_y  # [f, box, box]
    f, i, j = np.nonzero(mask)
    frames[idx[f], ys[f, i], xs[f, j]] = values[idx][f]


def iter_video_yuv420(scene: dict, full_range: bool, chunk: int = CHUNK):
    """Yield the whole video as planar YUV 4:2:0 chunks [<=chunk, H * 3 / 2, W] uint8."""
    planes = background_yuv420(scene, full_range)
    for start in range(0, scene["num_frames"], chunk):
        yield render_yuv420(
            scene, np.arange(start, min(start + chunk, scene["num_frames"])), planes, full_range
        )
