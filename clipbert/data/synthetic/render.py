"""Vectorised numpy renderer: ground-truth scene dict -> uint8 RGB frames [F, H, W, 3]."""

from __future__ import annotations

import math

import numpy as np

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
    """Render the frames `frame_indices` [F] of `scene` -> [F, H, W, 3] uint8.

    Static distractors are part of `bg` (see `painted_background`); the moving objects are painted in
    order second, main, so the main object is never occluded.
    """
    bg = painted_background(scene) if bg is None else bg
    times = np.asarray(frame_indices, dtype=np.float64) / scene["fps"]  # [F]
    frames = np.repeat(bg[None], len(times), axis=0)  # [F, H, W, 3]
    for role in ("second", "main"):
        for obj in scene["objects"]:
            if obj["role"] == role:
                _paint(frames, scene, obj, times)
    return frames


def painted_background(scene: dict) -> np.ndarray:
    """Background with the static distractors painted in -> [H, W, 3] uint8."""
    img = background(scene)[None].copy()  # [1, H, W, 3]
    for obj in scene["objects"]:
        if obj["role"] == "distractor":
            _paint(img, scene, obj, np.zeros(1))
    return img[0]


def _paint(frames: np.ndarray, scene: dict, obj: dict, times: np.ndarray) -> None:
    """Paint `obj` into `frames` [F, H, W, 3] at `times` [F], touching only its bounding box per frame."""
    cx, cy, present = positions(obj, scene, times)  # [F] each
    idx = np.flatnonzero(present)
    if len(idx) == 0:
        return
    r = obj["radius"]
    box = int(math.ceil(2 * r)) + 3  # box side covering the shape wherever its centre falls
    steps = np.arange(box)
    x0 = np.floor(cx[idx] - r).astype(np.int64) - 1  # [f] box corner
    y0 = np.floor(cy[idx] - r).astype(np.int64) - 1
    xs = x0[:, None] + steps  # [f, box] pixel columns
    ys = y0[:, None] + steps  # [f, box] pixel rows
    dx = (xs + 0.5 - cx[idx, None])[:, None, :]  # [f, 1, box] offsets of pixel centres
    dy = (ys + 0.5 - cy[idx, None])[:, :, None]  # [f, box, 1]
    inside_x = ((xs >= 0) & (xs < scene["width"]))[:, None, :]
    inside_y = ((ys >= 0) & (ys < scene["height"]))[:, :, None]
    mask = shape_mask(obj["shape"], dx, dy, r) & inside_x & inside_y  # [f, box, box]
    f, i, j = np.nonzero(mask)
    frames[idx[f], ys[f, i], xs[f, j]] = colors_rgb(obj, times[idx])[f]


def iter_video(scene: dict, chunk: int = CHUNK):
    """Yield the frames of the whole video in chunks of [<=chunk, H, W, 3] uint8."""
    bg = painted_background(scene)
    for start in range(0, scene["num_frames"], chunk):
        yield render_frames(scene, np.arange(start, min(start + chunk, scene["num_frames"])), bg)
