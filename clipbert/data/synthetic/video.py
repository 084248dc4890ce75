"""One video end to end: scene -> rendered frames -> encoded file, ground-truth JSON and JPEG stills.

`make_video` runs in worker processes; its output depends only on its arguments, so the benchmark is
the same for any number of workers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .encode import pix_fmt, video_extension, write_video
from .render import iter_video_yuv420, render_frames
from .scene import build_scene, color_at, fully_visible, object_by_id

IMAGES_PER_VIDEO = 2
JPEG_QUALITY = 90


def dump_json(path: Path, obj, indent: int | None = 1) -> None:
    """Stable bytes: fixed key order, fixed float repr, trailing newline."""
    path.write_text(json.dumps(obj, indent=indent) + "\n")


def make_video(job: dict) -> dict:
    """Generate video `job["video_id"]`; returns {"scene": ground truth, "images": [image records]}."""
    out = Path(job["out_dir"])
    rng = np.random.default_rng([job["seed"], job["index"]])
    scene = build_scene(rng, job["video_id"], job["attributes"], job["size"], job["codec"])
    scene["file"] = f"videos/{job['video_id']}.{video_extension(job['codec'])}"
    scene["split"] = job["split"]
    _encode(scene, out / scene["file"], job["codec"])
    images = []
    if job["split"] in ("train", "val"):  # test videos never leak into pre-training
        images = _write_stills(scene, out, rng)
    dump_json(out / "ground_truth" / f"{job['video_id']}.json", scene, indent=None)
    return {"scene": scene, "images": images}


def _encode(scene: dict, path: Path, codec: str) -> None:
    """Encode under a temporary name, then rename: a cut-off generation never leaves a partial file under
    a video's name. The temporary name keeps the extension, from which PyAV picks the container, and
    matches generate's stale-file pattern, so the next generation removes a leftover."""
    partial = path.with_name(f"{path.stem}.partial{path.suffix}")
    chunks = iter_video_yuv420(scene, full_range=pix_fmt(codec) == "yuvj420p")
    written = write_video(partial, chunks, scene["fps"], codec)
    if written != scene["num_frames"]:
        raise RuntimeError(f"{scene['file']}: wrote {written} frames, scene declares {scene['num_frames']}")
    os.replace(partial, path)


def _still_frames(scene: dict, rng: np.random.Generator) -> list[int]:
    """Frames where every coloured object is either fully in view or fully absent, so a caption fits."""
    times = np.arange(scene["num_frames"]) / scene["fps"]
    ok = fully_visible(object_by_id(scene, "main"), scene, times)
    for obj in scene["objects"]:
        if obj["role"] == "second":
            m = obj["motion"]
            in_transit = (times >= m["time"]) & (times < m["time"] + m["travel_time"])
            ok &= ~in_transit
    candidates = np.flatnonzero(ok)
    if len(candidates) == 0:
        candidates = np.arange(scene["num_frames"])
    picks = rng.choice(candidates, size=min(IMAGES_PER_VIDEO, len(candidates)), replace=False)
    return sorted(int(i) for i in picks)


def still_caption(scene: dict, frame: int) -> str:
    """What one frame shows: the main object's size, colour and shape, and the second object if there."""
    t = frame / scene["fps"]
    main = object_by_id(scene, "main")
    text = f"a {main['size']} {color_at(main, t)} {main['shape']}"
    for obj in scene["objects"]:
        if obj["role"] == "second" and fully_visible(obj, scene, np.array([t]))[0]:
            text += f" and a {obj['size']} {color_at(obj, t)} {obj['shape']}"
    return text


def _write_stills(scene: dict, out: Path, rng: np.random.Generator) -> list[dict]:
    frames = _still_frames(scene, rng)
    pixels = render_frames(scene, np.asarray(frames))  # [k, H, W, 3]
    records = []
    for frame, img in zip(frames, pixels):
        image_id = f"{scene['video_id']}_{frame:05d}"
        rel = f"images/{image_id}.jpg"
        Image.fromarray(img).save(out / rel, quality=JPEG_QUALITY)
        records.append(
            {
                "image_id": image_id,
                "caption": still_caption(scene, frame),
                "file": rel,
                "split": scene["split"],
                "video_id": scene["video_id"],
                "frame": frame,
            }
        )
    return records
