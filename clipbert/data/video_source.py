"""Where a dataset gets its frames: resolve a video id, sample clip indices, decode, pre-process, cache."""

from __future__ import annotations

import os
import unicodedata
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

from .config import DataConfig
from .decoders import VideoDecodeError, VideoInfo, build_decoder
from .frame_store import canonical_id, nearest_stored_indices
from .preprocess import Normalization, resize_pad
from .sampling import sample_frame_indices

# DiDeMo's Flickr videos mix .3gp and .m4v (MP4 family) with .mp4/.avi/.mov; a suffix missing here made such
# a video a "missing file" <id>.mp4 in training and left it out of the frame store and transcode unsaid.
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".gif", ".m4v", ".3gp")


def frame_rng(seed: int, epoch: int, video_id: str) -> np.random.Generator:
    """Clip sampling depends on (seed, key, video) alone, never on workers. `epoch` is the dataset's sample
    key (TaskDataset.sample_key): in training each text or question draws its own clips, so the key counts
    the example within its video as well as the epoch."""
    return np.random.default_rng([int(seed), int(epoch), zlib.crc32(video_id.encode()), 1])


class VideoSource:
    def __init__(self, cfg: DataConfig, norm: Normalization, train: bool):
        self.cfg, self.norm, self.train = cfg, norm, train
        if cfg.backend != "frame_store" and not Path(cfg.video_dir).is_dir():  # at start-up, not in a worker
            raise FileNotFoundError(f"data.video_dir={cfg.video_dir!r} is not a directory")
        self.decoder = build_decoder(cfg.backend, cfg.frame_store, cfg.pyav_threads)
        self.num_clips = cfg.num_clips if train else cfg.num_test_clips
        self.strategy = cfg.train_sampling if train else cfg.test_sampling
        self._paths: dict[str, list[str]] | None = None  # video id -> its files (one, unless ambiguous)
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def key(self, video_id: str) -> str:
        """The decoder's key: the file path for video backends, the id itself for the frame store."""
        if self.cfg.backend == "frame_store":
            return video_id
        paths = self._listing().get(canonical_id(video_id)) or [self._unlisted_path(video_id)]
        if len(paths) > 1:  # a.mp4 and a.webm: either could be the annotated video, so neither is taken
            raise VideoDecodeError(
                str(Path(self.cfg.video_dir) / video_id),
                f"ambiguous video id {video_id!r}: {' and '.join(paths)} both match; keep one",
            )
        return paths[0]

    def missing(self, video_ids: set[str]) -> list[str]:
        """The ids of `video_ids` this source does not hold, sorted, by key()'s own lookup in one listing of
        data.video_dir (kept, so forked workers inherit it), or of the frame store's /videos keys: never a
        probe of each file. An incomplete stored video counts as held: it is a bad input, said as such."""
        if self.cfg.backend == "frame_store":
            held = self.decoder.store.listed_ids()
            return sorted(v for v in video_ids if v not in held and canonical_id(v) not in held)
        listed = self._listing()
        present = lambda v: canonical_id(v) in listed or Path(self._unlisted_path(v)).is_file()  # noqa: E731
        return sorted(v for v in video_ids if not present(v))

    def _listing(self) -> dict[str, list[str]]:
        if self._paths is None:
            self._paths = files_by_id(self.cfg.video_dir)
        return self._paths

    def _unlisted_path(self, video_id: str) -> str:
        # An id written with its file's extension ("video7.mp4", as some annotation files write them) is that
        # file; it was looked up as video7.mp4.mp4 and every such video counted as missing. Any other id
        # gets <id>.mp4, a path that names the missing file in the bad-input report.
        exact = Path(self.cfg.video_dir) / video_id
        if exact.suffix.lower() in VIDEO_SUFFIXES and exact.is_file():
            return str(exact)
        return str(Path(self.cfg.video_dir) / f"{video_id}.mp4")

    def info(self, video_id: str) -> VideoInfo:
        return self.decoder.probe(self.key(video_id))

    def indices(self, video_id: str, epoch: int) -> np.ndarray:
        """int64 [N, T] frame indices of this video in this epoch; raises VideoDecodeError if unreadable."""
        info = self.info(video_id)
        num_frames, fps = info.num_frames, info.fps
        store = self.decoder.store if self.cfg.backend == "frame_store" else None
        if store is not None:  # sampled on the source video, as the video backends sample it
            num_frames, fps = store.source_timeline(video_id)
        num_clips = 1 if self.strategy == "middle" else self.num_clips
        rng = frame_rng(self.cfg.seed, epoch, video_id)
        indices = sample_frame_indices(
            num_frames,
            fps,
            num_clips,
            self.cfg.frames_per_clip,
            self.cfg.clip_seconds,
            self.strategy,
            rng,
        )
        if store is not None:  # each sampled frame read as the stored frame nearest it in time
            indices = nearest_stored_indices(indices, fps, info.fps, info.num_frames)
        return indices

    def frames(self, video_id: str, indices: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """uint8 [N, T, 3, L, L] resized, zero-padded frames and their content (h, w); decoded once per
        (video, indices) while cached. Normalization happens on the loader's device (loader.py)."""
        cache_key = (video_id, indices.tobytes())
        cached = self._cache.get(cache_key)
        if cached is not None:
            self._cache.move_to_end(cache_key)
            return cached
        raw = self.decoder.decode(self.key(video_id), indices)  # uint8 [N, T, H, W, 3]
        n, t = indices.shape
        size = self.cfg.image_size
        padded, hw = resize_pad(raw.reshape(n * t, *raw.shape[2:]), size)
        result = (padded.view(n, t, 3, size, size), hw)
        if self.cfg.frame_cache_size:
            self._cache[cache_key] = result
            while len(self._cache) > self.cfg.frame_cache_size:
                self._cache.popitem(last=False)
        return result


def files_by_id(video_dir: str | os.PathLike) -> dict[str, list[str]]:
    """Video id (the file's stem, canonical_id's NFC form) -> the video files in `video_dir` with that stem,
    sorted."""
    out: dict[str, list[str]] = {}
    for path in sorted(Path(video_dir).iterdir()):
        if path.suffix.lower() in VIDEO_SUFFIXES:
            out.setdefault(canonical_id(path.stem), []).append(str(path))
    return out


def missing_images(root: Path, files: set[str]) -> list[str]:
    """The files of `files` (relative to `root`) not in their folder, sorted: one listing per folder, names
    compared in NFC (as load_image's _existing_form matches either form)."""
    listings: dict[str, set[str]] = {}

    def listing(folder: str) -> set[str]:
        if folder not in listings:
            found = _existing_form(str(root / folder)) if folder else str(root)
            names = os.listdir(found) if os.path.isdir(found) else []
            listings[folder] = {unicodedata.normalize("NFC", name) for name in names}
        return listings[folder]

    missing = []
    for file in files:
        folder, _, name = unicodedata.normalize("NFC", file).rpartition("/")
        if name not in listing(folder):
            missing.append(file)
    return sorted(missing)


def _existing_form(path: str) -> str:
    """`path`, or the file it names with some parts in the other Unicode form (NFC or NFD), else itself.

    Why: an image task's "file" entries are written composed ("é", NFC) while macOS, and zip archives made
    there, name files and folders decomposed (e + accent, NFD); on Linux byte for byte such an image was a
    "missing file". Each part is matched on its own: data.image_root is often typed (or tab-completed) in
    one form and the entries written in the other. Videos are matched by id instead (canonical_id)."""
    if path.isascii() or os.path.isfile(path):
        return path
    parts = Path(path).parts
    found = Path(parts[0])
    for part in parts[1:]:
        forms = dict.fromkeys([part, unicodedata.normalize("NFC", part), unicodedata.normalize("NFD", part)])
        match = next((found / form for form in forms if os.path.lexists(found / form)), None)
        if match is None:
            return path
        found = match
    return str(found)


def load_image(
    path: str | os.PathLike, size: int, orientation: str = "stored"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """An image as one clip of one frame: uint8 [1, 1, 3, L, L] padded and its content (h, w).

    `orientation` (data.image_orientation): "stored" keeps the pixels as stored, as the original release
    read them with PIL; "exif" applies a JPEG's or PNG's EXIF orientation (a phone's photo), upright as an
    image viewer and DALI's fn.decoders.image show it (a WebP's is not read: torchvision ignores it). Alpha
    is dropped (not blended), a palette or grey image comes out RGB."""
    if orientation not in ("stored", "exif"):
        raise ValueError(f"orientation must be 'stored' or 'exif', got {orientation!r}")
    path = _existing_form(os.fspath(path))
    if not os.path.isfile(path):
        raise VideoDecodeError(path, "missing file")
    try:
        # [3, H, W]; an animated GIF or WebP: [F, 3, H, W]
        image = decode_image(path, mode=ImageReadMode.RGB, apply_exif_orientation=orientation == "exif")
    except (RuntimeError, ValueError) as err:
        raise VideoDecodeError(path, f"undecodable image ({err})") from err
    if image.ndim == 4:  # an animated GIF or WebP: its first frame, the one an image viewer shows
        image = image[0]
    if image.dtype == torch.uint16:  # a 16-bit PNG: rescaled (65535 -> 255, rounded), not wrapped
        image = ((image.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)
    if image.dtype != torch.uint8 or image.ndim != 3 or 0 in image.shape:
        raise VideoDecodeError(path, f"unsupported image: {image.dtype} {tuple(image.shape)}")
    padded, hw = resize_pad(image.permute(1, 2, 0)[None], size)
    return padded.view(1, 1, 3, size, size), hw
