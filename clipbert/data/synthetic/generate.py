"""The benchmark generator: sample attributes and splits, make videos (in parallel), write annotations."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import annotations, text
from .encode import CODECS
from .scene import SIZE_PRESETS, sample_attributes
from .video import dump_json, make_video

VERSION = 1
DEFAULT_NUM_VIDEOS = {"tiny": 12, "default": 260}
MAX_TEST, MAX_VAL = 50, 25  # 50 test videos: R@1 chance 2%, small enough to evaluate in seconds


def split_sizes(num_videos: int) -> dict[str, int]:
    """About 20% test (at most 50) and 10% val (at most 25), at least one video in each split."""
    if num_videos < 3:
        raise ValueError(f"num_videos={num_videos}: need at least 3 (one per split)")
    test = min(MAX_TEST, max(1, round(0.2 * num_videos)))
    val = min(MAX_VAL, max(1, round(0.1 * num_videos)))
    return {"train": num_videos - test - val, "val": val, "test": test}


def _sample_all_attributes(rng: np.random.Generator, num_videos: int) -> list[dict]:
    """Attributes for every video; redraws (a few times) so that no two full captions coincide."""
    seen: set[str] = set()
    out = []
    for _ in range(num_videos):
        for _attempt in range(20):
            attrs = sample_attributes(rng)
            caption = text.caption_from_attributes(attrs)
            if caption not in seen:
                break
        seen.add(caption)
        out.append(attrs)
    return out


def _assign_splits(rng: np.random.Generator, num_videos: int) -> list[str]:
    sizes = split_sizes(num_videos)
    labels = ["train"] * sizes["train"] + ["val"] * sizes["val"] + ["test"] * sizes["test"]
    return [labels[i] for i in rng.permutation(num_videos)]


def generate(
    out_dir: str | os.PathLike,
    num_videos: int | None = None,
    seed: int = 0,
    codec: str = "h264",
    size: str = "default",
    workers: int | None = None,
    progress: bool = False,
) -> dict:
    """Write the synthetic benchmark to `out_dir` (layout in docs/ARCHITECTURE.md); return meta.json's dict.

    The output is a pure function of (num_videos, seed, codec, size): `workers` changes only the speed.
    """
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r} not one of {sorted(CODECS)}")
    if size not in SIZE_PRESETS:
        raise ValueError(f"size {size!r} not one of {sorted(SIZE_PRESETS)}")
    num_videos = DEFAULT_NUM_VIDEOS[size] if num_videos is None else int(num_videos)
    workers = min(2, os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers={workers}: need at least 1")
    out = Path(out_dir)
    for sub in ("videos", "images", "ground_truth", "annotations"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    attributes = _sample_all_attributes(rng, num_videos)
    splits = _assign_splits(rng, num_videos)
    jobs = [
        {
            "index": i,
            "video_id": f"video{i:04d}",
            "split": splits[i],
            "attributes": attributes[i],
            "seed": seed,
            "size": size,
            "codec": codec,
            "out_dir": str(out),
        }
        for i in range(num_videos)
    ]
    results = _run_jobs(jobs, workers, progress)

    _remove_stale(out, results)
    scenes = {s: [r["scene"] for r in results if r["scene"]["split"] == s] for s in annotations.SPLITS}
    images = {s: [im for r in results for im in r["images"] if im["split"] == s] for s in ("train", "val")}
    counts = annotations.write_all(out, scenes, images, seed)
    counts["videos"] = {s: len(scenes[s]) for s in annotations.SPLITS}
    counts["images"] = {s: len(images[s]) for s in images}
    meta = {
        "generator": "clipbert.data.synthetic",
        "version": VERSION,
        "args": {"num_videos": num_videos, "seed": seed, "codec": codec, "size": size},
        "counts": counts,
        "chance": annotations.chance_levels(out, counts, len(scenes["test"]), len(scenes["val"])),
        "total_frames": sum(r["scene"]["num_frames"] for r in results),
        "total_seconds": round(sum(r["scene"]["duration"] for r in results), 3),
    }
    dump_json(out / "meta.json", meta)
    return meta


def _remove_stale(out: Path, results: list[dict]) -> None:
    """Delete videos, images and ground truth left in `out` by an earlier run with other arguments, so the
    directory holds exactly one benchmark (files of other names are left alone)."""
    kept = {r["scene"]["file"] for r in results} | {im["file"] for r in results for im in r["images"]}
    kept |= {f"ground_truth/{r['scene']['video_id']}.json" for r in results}
    patterns = {"videos": "video*.*", "images": "video*_*.jpg", "ground_truth": "video*.json"}
    for sub, pattern in patterns.items():
        for path in sorted((out / sub).glob(pattern)):
            if f"{sub}/{path.name}" not in kept:
                path.unlink()


def _run_jobs(jobs: list[dict], workers: int, progress: bool) -> list[dict]:
    bar = tqdm(total=len(jobs), desc="synthetic videos", unit="video", disable=not progress)
    try:
        if workers == 1:
            results = []
            for job in jobs:
                results.append(make_video(job))
                bar.update()
            return results
        # spawn: forking a parent that already runs torch / OpenMP threads can deadlock.
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            results = []
            for result in pool.map(make_video, jobs, chunksize=1):
                results.append(result)
                bar.update()
            return results
    finally:
        bar.close()
