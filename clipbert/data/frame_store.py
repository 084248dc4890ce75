"""An HDF5 store of JPEG frames sampled at a fixed fps, built once from the videos.

Layout (one group per video, written completely before its `complete` attribute is set, so an interrupted
build resumes where it stopped):
    /                         attrs: fps (store frame rate), version
    /videos/<video_id>/       attrs: fps, source_fps, source_num_frames, height, width, source_digest,
                              complete
        jpeg          vlen uint8 [F]   one JPEG per stored frame
        times         float64 [F]      k / fps: the stored frame's time on the video's frame-rank timeline
        source_index  int64 [F]        frame index in the source video
Stored frame k shows the source frame nearest to time k / fps, where time is frame rank / mean fps (the
probe's `fps`): the timeline every backend samples on, so the store and the video decoders pick the same
frames. For a constant-rate video that is the presentation time. For a variable-rate one (a GIF that holds a
frame, a phone recording) it is not: a 2 s hold counts as one frame there, as it does for PyAV and DALI.
Clips are sampled on the source video's frames, as the video decoders sample them, and each sampled frame is
read as the stored frame nearest it (`nearest_stored_indices`); sampled on the store's own timeline instead,
a 1 s clip at 2 fps held 2 stored frames, so T=2 took frames 0.5 s apart where PyAV and DALI take them 1 s
apart. The paper's configurations (T <= 2 frames a 1 s clip) are served by a 2 fps store to within a
quarter of a second; a store at the source fps gives exactly the video decoders' frames.
"""

from __future__ import annotations

import logging
import os
import unicodedata

import h5py
import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from .annotations import DataError
from .decoders.base import VideoDecodeError, VideoInfo

log = logging.getLogger(__name__)

# 2 (2026-11-29): a GIF's frame delays under 20 ms count as 100 ms, as browsers and FFmpeg show them. A
# version-1 store timed such a GIF at up to 10x its rate, so a 1 s clip spanned up to 10 s of it.
VERSION = 2


def open_h5(path: str | os.PathLike, mode: str) -> h5py.File:
    """h5py.File with HDF5's file lock where the filesystem has locks, and none where it has not.

    Why: HDF5 locks every file it opens and, by default, fails to open one on a filesystem without locks
    (Lustre mounted without flock, NFS without a lock manager: "unable to lock file, errno = 38"), a cluster's
    usual home for a store. The lock still keeps a build and a run from opening one store at once."""
    return h5py.File(path, mode, locking="best-effort")


def in_use_elsewhere(err: OSError) -> bool:
    """An open refused because another process holds the file (HDF5's lock: a build writing it, or runs
    reading it while a build wants to write), not because the file is damaged."""
    return isinstance(err, BlockingIOError) or (
        "unable to lock file" in str(err) and "errno = 11" in str(err)
    )


def canonical_id(video_id: str) -> str:
    """A video id in Unicode NFC, the form that names it in a frame store and keys a video folder's files.

    Why: macOS (and zip archives made there) writes "é" in a file name as "e" + a combining accent (NFD),
    while annotation files hold the composed "é" (NFC); byte for byte the id then named no file, and such a
    video was a "missing file" in training, or absent from the frame store, though both name it alike."""
    return unicodedata.normalize("NFC", video_id)


def stored_source_indices(source_num_frames: int, source_fps: float, fps: float) -> np.ndarray:
    """int64 [F]: the source frame shown by each stored frame (times k / fps, k = 0..F-1)."""
    count = max(1, int(np.ceil(source_num_frames * fps / source_fps - 1e-9)))
    times = np.arange(count) / fps
    return np.minimum(np.round(times * source_fps).astype(np.int64), source_num_frames - 1)


def nearest_stored_indices(
    source_indices: np.ndarray, source_fps: float, fps: float, num_stored: int
) -> np.ndarray:
    """int64 source frame indices (any shape) -> the stored frames nearest them in time, same shape: the
    inverse of `stored_source_indices`, so that clips sampled on the source video read from the store."""
    stored = np.round(np.asarray(source_indices, dtype=np.float64) * (fps / source_fps))
    return np.clip(stored, 0, num_stored - 1).astype(np.int64)


def encode_frames(frames: np.ndarray, quality: int = 90) -> list[np.ndarray]:
    """uint8 [F, H, W, 3] RGB -> list of F JPEG byte arrays."""
    chw = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    return [encode_jpeg(image.contiguous(), quality=quality).numpy() for image in chw]


class FrameStore:
    """Read access; the HDF5 file is opened lazily in each process (h5py handles do not survive fork)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"frame store not found: {self.path}")
        # Opened once at start-up (and closed: handles do not survive fork), so that a truncated, foreign or
        # non-HDF5 file is one error naming it, not every sample of the run failing as a bad video.
        try:
            with open_h5(self.path, "r") as h5:
                is_store = isinstance(h5.get("videos"), h5py.Group)
                version = int(h5.attrs.get("version", 0))
        except OSError as err:
            if in_use_elsewhere(err):
                raise DataError(
                    f"frame store {self.path} is being written by another process (a build_frame_store still "
                    "running?): start once it has finished"
                ) from err
            raise DataError(
                f"frame store {self.path} is not a readable HDF5 file ({err}); rebuild it"
            ) from err
        if not is_store:
            raise DataError(f"frame store {self.path} has no /videos group: not built by build_frame_store")
        if version < VERSION:
            log.warning(
                "frame store %s was built by version %d (now %d): if its sources include GIFs with frame "
                "delays under 20 ms, their frames are timed too fast there; rebuild it (build_frame_store "
                "--out NEW) to read them as the video decoders do",
                self.path,
                version,
                VERSION,
            )
        self._file, self._pid = None, None

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = open_h5(self.path, "r"), os.getpid()
        return self._file

    def __getstate__(self):
        return {"path": self.path, "_file": None, "_pid": None}

    def video_ids(self) -> list[str]:
        videos = self._h5().get("videos")
        return [k for k in videos if videos[k].attrs.get("complete", False)] if videos is not None else []

    def listed_ids(self) -> set[str]:
        """The ids under /videos, complete or not, from a handle closed again: the start-up coverage check
        (datasets.py) lists them in the main process, whose open handle a forked worker must not share."""
        with open_h5(self.path, "r") as h5:
            return set(h5["videos"].keys())

    def _group(self, video_id: str) -> h5py.Group:
        h5 = self._h5()
        # as stored (a store built before canonical ids may hold another form), else the canonical form
        group = h5.get(f"videos/{video_id}")
        if group is None:
            group = h5.get(f"videos/{canonical_id(video_id)}")
        if group is None or not group.attrs.get("complete", False):
            raise VideoDecodeError(video_id, f"not in frame store {self.path}")
        return group

    def info(self, video_id: str) -> VideoInfo:
        try:
            group = self._group(video_id)
            attrs = group.attrs
            height, width = int(attrs.get("height", 0)), int(attrs.get("width", 0))
            num_frames, fps = int(group["jpeg"].shape[0]), float(attrs["fps"])
        except (KeyError, OSError) as err:
            raise VideoDecodeError(video_id, f"corrupt frame store entry ({err})") from err
        # the builder stores >= 1 frame at fps > 0; anything else is damage, which clip sampling would raise
        # as a ValueError mid-training instead of a bad video that the dataset replaces and counts
        if num_frames < 1 or not 0 < fps < float("inf"):
            raise VideoDecodeError(video_id, f"corrupt frame store entry ({num_frames} frames at fps {fps})")
        return VideoInfo(num_frames, fps, height, width, "jpeg")

    def source_timeline(self, video_id: str) -> tuple[int, float]:
        """(frame count, fps) of the source video the entry was built from: clips are sampled on it."""
        try:
            attrs = self._group(video_id).attrs
            num_frames, fps = int(attrs["source_num_frames"]), float(attrs["source_fps"])
        except (KeyError, OSError, TypeError, ValueError) as err:
            raise VideoDecodeError(video_id, f"corrupt frame store entry ({err})") from err
        if num_frames < 1 or not 0 < fps < float("inf"):
            raise VideoDecodeError(video_id, f"corrupt frame store entry (source {num_frames} at fps {fps})")
        return num_frames, fps

    def times(self, video_id: str) -> np.ndarray:
        return self._group(video_id)["times"][:]

    def read_jpegs(self, video_id: str, indices: np.ndarray) -> list[np.ndarray]:
        """Encoded JPEG bytes of a flat list of stored-frame indices (for batched GPU decoding)."""
        try:
            jpegs = self._group(video_id)["jpeg"]
            data = {i: np.asarray(jpegs[i], dtype=np.uint8) for i in sorted(set(int(i) for i in indices))}
        except (KeyError, OSError, ValueError) as err:
            raise VideoDecodeError(video_id, f"corrupt frame store entry ({err})") from err
        return [data[int(i)] for i in indices]

    def read_frames(self, video_id: str, indices: np.ndarray) -> list[torch.Tensor]:
        """Decoded uint8 [H, W, 3] RGB frames for a flat list of stored-frame indices."""
        encoded = dict(zip((int(i) for i in indices), self.read_jpegs(video_id, indices)))
        try:
            # RGB as DALI's reader decodes them: a greyscale or CMYK JPEG gave 1 or 4 channels, which the
            # resize raised as a ValueError mid-training
            decoded = {
                i: decode_jpeg(torch.from_numpy(data), mode=ImageReadMode.RGB) for i, data in encoded.items()
            }
        except (RuntimeError, ValueError) as err:
            raise VideoDecodeError(video_id, f"corrupt frame store entry ({err})") from err
        return [decoded[int(i)].permute(1, 2, 0) for i in indices]
