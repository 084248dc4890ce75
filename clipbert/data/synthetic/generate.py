"""The benchmark generator: sample attributes and splits, make videos (in parallel), write annotations."""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ...progress import progress_bar
from ...system import usable_cpus
from . import annotations, text
from .encode import CODECS
from .scene import SIZE_PRESETS, sample_attributes
from .video import dump_json, make_video

# Bumped whenever the same arguments give other files, so that a benchmark of another version is regenerated.
# 2: tgif_transition's wrong options are answers drawn like the true one (were a fixed pool).
VERSION = 2
META = "meta.json"  # written last and removed first: its presence says a generation ran to its end
GENERATOR = "clipbert.data.synthetic"  # META's "generator": whose meta.json it is
GENERATING = ".generating"  # written first, removed once meta.json is there: marks a cut-off generation
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


def video_file(index: int, codec: str) -> str:
    """Path of video `index` relative to the benchmark directory."""
    return f"videos/{_video_id(index)}.{CODECS[codec]['ext']}"


def _video_id(index: int) -> str:
    return f"video{index:04d}"


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
    meta.json goes first and comes back last, so a cut-off generation leaves a directory that
    `not_ready_reason` rejects.
    """
    num_videos, workers = _checked_args(num_videos, codec, size, workers)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {out} is a file, not a directory")
    _refuse_foreign_files(out)
    for sub in ("videos", "images", "ground_truth", "annotations"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / GENERATING).touch()  # before meta.json goes: the folder is always marked as the generator's
    (out / META).unlink(missing_ok=True)  # until the new one is written, the directory is not a benchmark

    rng = np.random.default_rng(seed)
    attributes = _sample_all_attributes(rng, num_videos)
    splits = _assign_splits(rng, num_videos)
    common = {"seed": seed, "size": size, "codec": codec, "out_dir": str(out)}
    jobs = [
        {"index": i, "video_id": _video_id(i), "split": splits[i], "attributes": attributes[i], **common}
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
        "generator": GENERATOR,
        "version": VERSION,
        "args": {"num_videos": num_videos, "seed": seed, "codec": codec, "size": size},
        "counts": counts,
        "chance": annotations.chance_levels(out, counts, len(scenes["test"]), len(scenes["val"])),
        "total_frames": sum(r["scene"]["num_frames"] for r in results),
        "total_seconds": round(sum(r["scene"]["duration"] for r in results), 3),
    }
    tmp = out / f"{META}.partial"
    dump_json(tmp, meta)
    os.replace(tmp, out / META)  # atomic: a cut-off write leaves no meta.json, never a truncated one
    (out / GENERATING).unlink()
    return meta


def _refuse_foreign_files(out: Path) -> None:
    """FileExistsError naming them if `out` holds files that generation would delete, overwrite or mix with
    its own, and that no generation marked as its own (it holds neither this generator's META nor GENERATING).

    Why: a real dataset's folder given as --out lost its videos without a word: MSR-VTT's are named
    video0.mp4 ... video9999.mp4, which _remove_stale deletes, and its annotations/ were overwritten. A
    META that reads as another tool's (JSON without the generator's name) is no mark; a cut-off one is."""
    meta, _ = _read_meta(out / META)
    ours = (out / META).is_file() and (meta is None or meta.get("generator") == GENERATOR)
    if ours or (out / GENERATING).exists():
        return
    patterns = {
        "videos": "video*.*",
        "images": "video*_*.jpg",
        "ground_truth": "video*.json",
        "annotations": "*",
    }
    found = [p for sub, pattern in patterns.items() for p in sorted((out / sub).glob(pattern)) if p.is_file()]
    if found:
        named = ", ".join(str(p.relative_to(out)) for p in found[:3]) + (", ..." if len(found) > 3 else "")
        raise FileExistsError(
            f"{out} holds {len(found)} files that no generation marked as its own ({named}), which "
            "generating would delete, overwrite or mix with its own: give an empty or new --out (a "
            "generation cut off before 2026-11-30 left no mark: remove its folder)"
        )


def _checked_args(num_videos: int | None, codec: str, size: str, workers: int | None) -> tuple[int, int]:
    """(num_videos, workers) with the defaults filled in; checked before anything on disk changes."""
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r} not one of {sorted(CODECS)}")
    if size not in SIZE_PRESETS:
        raise ValueError(f"size {size!r} not one of {sorted(SIZE_PRESETS)}")
    num_videos = _num_videos(num_videos, size)
    split_sizes(num_videos)  # raises for fewer than 3
    workers = min(2, usable_cpus()) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers={workers}: need at least 1")
    return num_videos, workers


def not_ready_reason(
    out_dir: str | os.PathLike,
    num_videos: int | None = None,
    seed: int = 0,
    codec: str = "h264",
    size: str = "default",
) -> str | None:
    """Why `out_dir` holds no finished benchmark of these arguments and of this VERSION; None if it does.

    meta.json says that a generation ran to its end; the files it implies are checked too, as they can be
    deleted afterwards.
    """
    out = Path(out_dir)
    meta, reason = _read_meta(out / META)
    if meta is None:
        return reason
    if meta.get("version") != VERSION:
        return f"{out / META} is of generator version {meta.get('version')}, this is version {VERSION}"
    want = {"num_videos": _num_videos(num_videos, size), "seed": seed, "codec": codec, "size": size}
    if meta.get("args") != want:
        return f"{out / META} has args {meta.get('args')}, want {want}"
    return _missing_files(out, meta)


def _num_videos(num_videos: int | None, size: str) -> int:
    return DEFAULT_NUM_VIDEOS[size] if num_videos is None else int(num_videos)


def _read_meta(path: Path) -> tuple[dict | None, str | None]:
    if not path.is_file():
        return None, f"{path} is missing (never generated, or its generation was cut off)"
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, f"{path} is cut off or corrupt ({err})"
    if not isinstance(meta, dict):
        return None, f"{path} holds no JSON object"
    return meta, None


def _missing_files(out: Path, meta: dict) -> str | None:
    """The videos of meta's args that are absent or empty, and the annotation files of its counts that are
    absent (a task can have no item in a split of a small benchmark, so those may be empty)."""
    args, counts = meta["args"], meta.get("counts", {})
    videos = [video_file(i, args["codec"]) for i in range(args["num_videos"])]
    missing = [f for f in videos if not (out / f).is_file() or (out / f).stat().st_size == 0]
    for task, splits in counts.items():
        if task in ("videos", "images"):  # counts of files, not annotation files
            continue
        files = [f"annotations/{task}_{split}.jsonl" for split in splits]
        missing += [f for f in files if not (out / f).is_file()]
    if missing:
        return f"{len(missing)} of its video and annotation files are missing or empty, e.g. {missing[:3]}"
    return None


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
    bar = progress_bar(total=len(jobs), desc="synthetic videos", unit="video", disable=not progress)
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
