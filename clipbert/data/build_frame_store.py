"""Build the frame store: `python -m clipbert.data.build_frame_store --videos DIR --fps F --out frames.h5`.

Videos are decoded in parallel worker processes; the main process writes, shows progress, and skips videos
that a previous (interrupted) run finished, so re-running resumes. A video replaced under the same name since
its entry was written (another size, head or tail: `source_digest`) is encoded again; entries of videos no
longer in --videos are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import multiprocessing as mp
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import h5py
import numpy as np
import torch

from clipbert.progress import progress_bar
from clipbert.system import usable_cpus
from clipbert.train.logging import LOG_DATEFMT, LOG_FORMAT

from .decoders.base import VideoDecodeError
from .decoders.pyav import PyAVDecoder
from .frame_store import (
    VERSION,
    canonical_id,
    encode_frames,
    in_use_elsewhere,
    open_h5,
    stored_source_indices,
)
from .preprocess import resize_frames
from .video_source import VIDEO_SUFFIXES  # one list: a video training finds is one the store holds

log = logging.getLogger(__name__)
# Decoded frames a worker holds at once (_encode_entry): about 46 frames of 720p, 23 s of video at 2 fps.
DECODE_CHUNK_BYTES = 128 << 20
# Read from each end of a video for source_digest: 16 KiB a video, 1.6 GB for a resume of 100k videos.
FINGERPRINT_BYTES = 8 << 10


def _init_worker() -> None:
    # One thread per process: the pool supplies the parallelism (16 processes x 16 torch threads each
    # stalled a 16-core machine at 2-4 videos/s).
    torch.set_num_threads(1)


def _encode_video(job: tuple[str, float, int, int]) -> tuple[str, dict | None, str | None]:
    """Worker: (path, entry, None) for a video encoded, (path, None, why) for one that failed.

    Any exception counts as that one file's failure: an unforeseen error in one of 100k videos (a PyAV or
    numpy error outside VideoDecodeError) must be reported with its file, not abort hours of build.
    """
    path, fps, max_side, quality = job
    try:
        return path, _encode_entry(path, fps, max_side, quality), None
    except VideoDecodeError as err:
        return path, None, str(err)
    except Exception as err:  # any other: reported per file, see above
        return path, None, f"{path}: unexpected {type(err).__name__} ({err})"


def _encode_entry(path: str, fps: float, max_side: int, quality: int) -> dict:
    """Decode one video at the store fps and JPEG-encode its frames; raises VideoDecodeError.

    Decoded and encoded DECODE_CHUNK_BYTES of frames at a time. Why: the whole video's frames were decoded
    into one array first, F x H x W x 3 bytes and more while stacking them: over 3.3 GB for a 10-minute 720p
    video at 2 fps (ActivityNet has such videos) in every worker, which the machine's memory ran out of."""
    decoder = PyAVDecoder()
    info = decoder.probe(path)  # missing or unreadable: VideoDecodeError, before the digest's open
    digest = source_digest(path)  # of the file as it was before its encoding
    source_index = stored_source_indices(info.num_frames, info.fps, fps)
    step = max(1, DECODE_CHUNK_BYTES // max(1, info.height * info.width * 3))  # frames per chunk
    jpeg, decoded = [], None  # decoded: the first chunk's decoded (height, width)
    for start in range(0, len(source_index), step):
        frames = decoder.decode(path, source_index[None, start : start + step])[0]  # [f, H, W, 3]
        if decoded is not None and frames.shape[1:3] != decoded:  # as one decode reports it within a chunk
            (h0, w0), (h1, w1) = decoded, frames.shape[1:3]
            at = source_index[start]
            raise VideoDecodeError(
                path, f"frame size changes mid-stream ({h0}x{w0}, {h1}x{w1} at frame {at})"
            )
        decoded = frames.shape[1:3]
        if max_side and max(frames.shape[1:3]) > max_side:
            frames = resize_frames(frames, max_side).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        jpeg += encode_frames(frames, quality)
    return {
        "jpeg": jpeg,
        "times": np.arange(len(source_index)) / fps,
        "source_index": source_index,
        "source_fps": info.fps,
        "source_num_frames": info.num_frames,
        "height": frames.shape[1],
        "width": frames.shape[2],
        "source_digest": digest,
    }


def source_digest(path: str | os.PathLike) -> str:
    """A fingerprint of a video file: its size and a hash of its first and last FINGERPRINT_BYTES.

    Stored with each entry so that a rerun re-encodes a video replaced under the same name (a re-download,
    a fixed transcode), which was skipped as "already there" and trained on as the old video's frames.
    Why not the modification time: a copy of the videos to another machine changes it, and would re-encode
    them all. A container's head and tail (MP4's moov, WebM's cues) change with any re-encode."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        digest.update(str(size).encode())
        digest.update(file.read(FINGERPRINT_BYTES))
        file.seek(max(0, size - FINGERPRINT_BYTES))
        digest.update(file.read(FINGERPRINT_BYTES))
    return digest.hexdigest()


def _unchanged(path: Path, group) -> bool:
    """Whether a complete entry still holds `path`'s video: its source_digest matches the file's. An entry of
    a store built before source digests cannot be checked and is kept, and so is the entry of a file that
    cannot be read now (permissions, a dangling link), with a warning, as that of a video no longer listed."""
    if "source_digest" not in group.attrs:
        return True
    try:
        return group.attrs["source_digest"] == source_digest(path)
    except OSError as err:
        log.warning("frame store: cannot read %s to check its entry (%s): keeping the entry", path, err)
        return True


def _write_entry(h5: h5py.File, video_id: str, entry: dict, fps: float) -> None:
    group = h5.require_group("videos").create_group(video_id)
    jpeg = group.create_dataset("jpeg", (len(entry["jpeg"]),), dtype=h5py.vlen_dtype(np.uint8))
    for i, data in enumerate(entry["jpeg"]):
        jpeg[i] = data
    group.create_dataset("times", data=entry["times"])
    group.create_dataset("source_index", data=entry["source_index"])
    group.attrs.update(fps=fps, source_fps=entry["source_fps"], source_num_frames=entry["source_num_frames"])
    group.attrs.update(height=entry["height"], width=entry["width"])
    group.attrs["source_digest"] = entry["source_digest"]
    group.attrs["complete"] = True  # last: a group without it is rewritten on resume
    h5.flush()


class StoreWriteError(OSError):
    """The store could not be written (a full disk, a quota, an I/O error): main exits 4 with the message."""


def _write_failure(err: Exception) -> str:
    """The OS error in HDF5's message ("... file write failed: time = ..., errno = 28, error message = 'No
    space left on device', buf = ..."), else the message."""
    found = re.search(r"errno = (\d+), error message = '([^']*)'", str(err))
    return f"{found[2]} (errno {found[1]})" if found else str(err)


def _close_after_failure(h5: h5py.File) -> None:
    """Close a store whose write failed, quietly. Why: HDF5 flushes it again on close, failing the same way,
    and that error replaced the first; a second File.close (the `with`'s) crashed the process in HDF5.
    HDF5's complaints about each object it cannot flush say the same as the error: they are not printed."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        h5.close()
    except (OSError, RuntimeError) as err:
        log.debug("frame store: closing after the failed write: %s", err)
        with contextlib.suppress(OSError, RuntimeError):
            h5.id.close()  # the file alone: File.close is not tried again
    finally:
        sys.unraisablehook = hook


def _unreadable_entries(h5: h5py.File) -> list[str]:
    """The /videos entries whose group cannot be opened: a write that failed (a full disk) left their link
    on disk but not the group it names, and no HDF5 call can delete or move such a link."""
    videos = h5.get("videos")
    return [key for key in videos if videos.get(key) is None] if videos is not None else []


def _rewrite_readable(h5: h5py.File, out: str | os.PathLike) -> h5py.File:
    """Copy the store's readable entries to a new file that replaces it, and open that one.

    Why: an entry whose write failed can be neither deleted nor written again ("name already exists"), so the
    rerun that should resume the build failed; the store's readers do not read it either (not complete)."""
    broken = _unreadable_entries(h5)
    log.warning(
        "frame store: %s holds %d entr(ies) a failed write left unreadable (%s): copying its complete "
        "entries to a new file, which replaces it",
        out,
        len(broken),
        ", ".join(broken[:5]),
    )
    tmp = Path(f"{out}.rewrite")
    try:
        with open_h5(tmp, "w") as new:
            new.attrs.update(dict(h5.attrs))
            videos = h5["videos"]
            target = new.create_group("videos")
            for key in videos:
                group = videos.get(key)
                if group is not None and group.attrs.get("complete", False):
                    h5.copy(group, target, name=key)
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        # the rerun after a full disk comes here: say how much room the copy takes, as "free space" alone
        # does not tell that it needs about the store's own size
        raise StoreWriteError(
            f"cannot rewrite the frame store {out} to {tmp}: {_write_failure(err)}. The rewrite copies the "
            f"store's complete entries, and needs up to {os.path.getsize(out) / 2**30:.1f} GiB free beside it"
        ) from err
    finally:
        h5.close()  # the copy's source; nothing of it was changed
    os.replace(tmp, out)
    return open_h5(out, "a")


def list_videos(video_dir: str | os.PathLike) -> list[Path]:
    """The video files of `video_dir`, sorted; the other files are counted by suffix in a warning.

    Why the warning: a dataset's .mpg or .wmv videos were left out of the store (and of transcode) unsaid,
    and training then named each as "not in the frame store" with no hint of why."""
    root = Path(video_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    entries = sorted(root.iterdir())
    others = Counter(
        p.suffix.lower() or p.name
        for p in entries
        if p.suffix.lower() not in VIDEO_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )
    if others:
        log.warning(
            "%s: %d file(s) without a video suffix (%s) are not read: %s",
            root,
            sum(others.values()),
            " ".join(VIDEO_SUFFIXES),
            ", ".join(f"{count} {suffix}" for suffix, count in sorted(others.items())),
        )
    return [p for p in entries if p.suffix.lower() in VIDEO_SUFFIXES]


def _video_id(path: str | os.PathLike) -> str:
    """The id a video file is stored under: its stem, in the NFC form annotations use (canonical_id)."""
    return canonical_id(Path(path).stem)


def _drop_shared_stems(videos: list[Path], result: dict[str, list[str]]) -> list[Path]:
    """The videos whose stem (their id in the store) no other video has; the others count as failed.

    a.mp4 and a.webm would both be stored as "a": the second write met the first's HDF5 group (a bare
    h5py ValueError that stopped the build), and which file the id meant is unknown, so neither is stored.
    """
    ids = {path: _video_id(path) for path in videos}
    by_stem: dict[str, list[Path]] = {}
    for path in videos:
        by_stem.setdefault(ids[path], []).append(path)
    for stem, paths in by_stem.items():
        if len(paths) > 1:
            log.warning(
                "frame store: skipping %s: they share the video id %r; keep one",
                " and ".join(map(str, paths)),
                stem,
            )
            result["failed"] += [stem] * len(paths)
    return [path for path in videos if len(by_stem[ids[path]]) == 1]


def build_frame_store(
    video_dir: str | os.PathLike,
    out: str | os.PathLike,
    fps: float = 2.0,
    workers: int = 2,
    max_side: int = 0,
    quality: int = 90,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Build or resume a store; returns {"written": ids, "skipped": ids, "failed": ids}."""
    # Checked here, once: each bad setting otherwise failed every video one by one (quality 0, fps inf) or,
    # worse, built silently (max_side -5 stored 1x1 frames).
    if not 0 < fps < float("inf"):
        raise ValueError(f"fps must be a finite number > 0, got {fps}")
    if max_side < 0:
        raise ValueError(f"max_side must be >= 0 (0 keeps the size), got {max_side}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1..100, got {quality}")
    videos, result = list_videos(video_dir), {"written": [], "skipped": [], "failed": []}
    if not videos:  # a wrong --videos: an empty store would make every training sample "not in frame store"
        raise ValueError(
            f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {video_dir} (subfolders are not searched)"
        )
    videos = _drop_shared_stems(videos, result)
    try:
        h5 = open_h5(out, "a")
    except OSError as err:  # missing folder, a directory, a truncated or non-HDF5 file: not a traceback
        if in_use_elsewhere(err):  # not damage: moving it away would throw away a good store
            raise ValueError(
                f"{out} is open in another process (another build of it, or a training run reading it): "
                "build it once that has finished"
            ) from err
        raise ValueError(
            f"cannot open {out} to build or resume a frame store ({err}); if it is a damaged store, move it "
            "away and build again"
        ) from err
    if _unreadable_entries(h5):
        h5 = _rewrite_readable(h5, out)
    with h5:
        # a resume must encode as the store was built: one store, one fps, size and JPEG quality
        for name, value in (("fps", fps), ("max_side", max_side), ("quality", quality)):
            if name in h5.attrs and float(h5.attrs[name]) != value:
                raise ValueError(
                    f"{out} was built at {name}={h5.attrs[name]}, not {value}: resume it with the same "
                    "settings, or use another --out"
                )
        _check_version(h5, out, videos)
        h5.attrs.update(fps=fps, max_side=max_side, quality=quality, version=VERSION)
        done = h5.require_group("videos")
        # On disk now: a build killed (SIGTERM, OOM) before its first entry's flush left a file whose header
        # was never written, which no later run could open to resume.
        h5.flush()
        jobs = []
        for path in videos:
            # "..mp4": HDF5 reads "videos/." as /videos itself, whose delete below raised a bare KeyError
            video_id = _video_id(path)
            if video_id == ".":
                log.warning("frame store: skipping %s: its video id '.' cannot name an HDF5 group", path)
                result["failed"].append(video_id)
                continue
            group = done.get(video_id)
            complete = group is not None and group.attrs.get("complete", False)
            if complete and _unchanged(path, group):
                result["skipped"].append(video_id)
                continue
            if complete:
                log.warning("frame store: %s changed since it was stored: encoding it again", path)
            if group is not None:  # interrupted mid-write, or stale
                del done[video_id]
            jobs.append((str(path), fps, max_side, quality))
        results = _encoded(jobs, workers)
        try:
            for path, entry, error in progress_bar(results, total=len(jobs), disable=not progress):
                video_id = _video_id(path)
                if entry is None:
                    log.warning("frame store: skipping %s", error)
                    result["failed"].append(video_id)
                    continue
                try:
                    _write_entry(h5, video_id, entry, fps)
                except (OSError, RuntimeError) as err:  # HDF5 says a full disk with a RuntimeError
                    _close_after_failure(h5)
                    raise StoreWriteError(
                        f"cannot write the frame store {out} (entry {video_id}): {_write_failure(err)}. "
                        "The entries written before it are kept: free space, then rerun the same command "
                        "to resume"
                    ) from err
                result["written"].append(video_id)
        finally:
            results.close()  # a stopped build ends its workers now
    return result


def _check_version(h5, out, videos: list[Path]) -> None:
    """Refuse to resume a store of an older version with GIF sources: its GIF entries may be timed as the
    older code timed them (frame_store.VERSION), and a resume would mix the two timings in one store. Other
    sources are stored alike by every version, so such a store resumes."""
    built = int(h5.attrs.get("version", VERSION)) if len(h5.get("videos", {})) else VERSION
    gifs = [p.name for p in videos if p.suffix.lower() == ".gif"]
    if built < VERSION and gifs:
        named = ", ".join(gifs[:3]) + (", ..." if len(gifs) > 3 else "")
        raise ValueError(
            f"{out} was built by frame store version {built}, which timed GIFs with frame delays under 20 ms "
            f"too fast, and the videos include GIFs ({named}): build a new store with another --out"
        )


WORKER_DIED = "its worker process died encoding it (out of memory, or a crash in the decoder)"


def _encoded(jobs: list[tuple], workers: int) -> Iterator[tuple[str, dict | None, str | None]]:
    """_encode_video's (path, entry, error) of every job, in completion order; workers=0 encodes here (tests,
    debugging). Worker processes are spawned: a fork would inherit the open HDF5 file.

    Why not Pool.imap_unordered: a worker killed mid-video (the OOM killer, a crash inside FFmpeg) took its
    job with it, and the build waited for that result forever. Here a worker's death ends its pool; the jobs
    that pool had in flight are retried one at a time, each in a pool of its own, so the video whose worker
    dies again fails, named, and the other jobs go on in a new pool."""
    if workers == 0:
        yield from map(_encode_video, jobs)
        return
    todo = jobs[::-1]  # taken from the end: in the listed order
    while todo:
        for job in (yield from _encode_in_pool(todo, workers)):
            if (yield from _encode_in_pool([job], 1)):
                yield job[0], None, f"{job[0]}: {WORKER_DIED}"


def _encode_in_pool(todo: list[tuple], workers: int):
    """Encode jobs taken from the end of `todo` in a new pool of `workers` processes, yielding the results.
    Returns [] when `todo` is done, or the jobs in flight when a worker died (`todo` keeps the others)."""
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker)
    running: dict[Future, tuple] = {}  # never more than `workers`: few suspects when one dies
    ready = []  # results of finished jobs, handed out once their workers have the next jobs
    try:
        while todo or running:
            while todo and len(running) < workers:
                job = todo.pop()
                running[pool.submit(_encode_video, job)] = job
            yield from ready  # the caller writes them to the store meanwhile
            ready = []
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            if any(isinstance(future.exception(), BrokenProcessPool) for future in done):
                wait(running)  # the pool fails every unfinished job at once; those finished before count
                suspects = [job for future, job in running.items() if future.exception() is not None]
                yield from (future.result() for future in running if future.exception() is None)
                return suspects
            for future in done:
                ready.append(future.result())
                del running[future]
        yield from ready
    finally:  # done, a worker died, Ctrl-C, an error writing the store, or the caller closing
        _stop(pool)
    return []


def _stop(pool: ProcessPoolExecutor) -> None:
    """End a pool's workers now. Why not shutdown(wait=True): a stopped build waited for each worker to finish
    its video (minutes for a long one), and even idle workers took seconds to exit."""
    processes = list((pool._processes or {}).values())  # no public way before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join()


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 built, 1 some videos failed (named in the log, the rest built), 2 bad arguments or
    settings (a folder without videos, an --out that cannot be opened), 4 the store could not be written (a
    full disk), 130 interrupted (rerun the same command to resume)."""
    parser = argparse.ArgumentParser(
        prog="python -m clipbert.data.build_frame_store", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--videos", required=True, help="folder of videos")
    parser.add_argument("--fps", type=float, default=2.0, help="stored frames per second (default: 2)")
    parser.add_argument("--out", required=True, help="HDF5 file to create or resume")
    parser.add_argument(
        "--workers",
        type=int,
        default=max(1, usable_cpus() - 1),
        help="decoding processes (default: the CPUs this process may use, less one)",
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=0,
        help="downscale frames so the longer side fits (default: 0, keep the size)",
    )
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default: 90)")
    args = parser.parse_args(argv)
    # the trainer's format: a build of thousands of videos takes hours, and each line now says when it came
    # (the default format, "WARNING:__main__:...", had no time)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt=LOG_DATEFMT)
    try:
        result = build_frame_store(args.videos, args.out, args.fps, args.workers, args.max_side, args.quality)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except StoreWriteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        print(f"interrupted: complete videos are kept in {args.out}; rerun to resume", file=sys.stderr)
        return 130
    counts = {key: len(ids) for key, ids in result.items()}
    print(
        f"{args.out}: {counts['written']} video(s) written, {counts['skipped']} already there, "
        f"{counts['failed']} failed"
    )
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
