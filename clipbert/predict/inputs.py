"""The user's inputs: video or image paths (files, directories, globs), texts, and each video's Ntest clips
(or each image, as one clip of one frame) as the model's evaluation sees them (PyAV decoding, the run's test
sampling, the loader's normalization)."""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from clipbert.data.video_source import VIDEO_SUFFIXES, VideoSource, load_image

NOT_UTF8 = "a file name that is not UTF-8, which the decoders cannot open: rename it"
PROGRESS_FROM = 4  # inputs: a bar from this many on (a few are done before a bar would say anything)
# what torchvision's decode_image reads (load_image); an animated GIF or WebP gives its first frame
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")
SUFFIXES = {"video": VIDEO_SUFFIXES, "image": IMAGE_SUFFIXES}


@dataclass
class Skipped:
    path: str  # the path (or pattern, or directory) as the user gave or we expanded it
    reason: str


def expand_inputs(specs: list[str], unit: str = "video") -> tuple[list[str], list[Skipped]]:
    """--video (unit "video") or --image ("image") values -> (files to score, in order given and without
    repeats; what named none).

    A directory gives its files, a pattern with * ? or [ its matches, sorted (`**` matches folders at any
    depth); an existing file or a plain path is kept as it is, so a missing file is reported by the decoder
    like any other bad input. A file named twice (`a.mp4`, `./a.mp4`, or through a link: `**` follows
    a link to a parent folder 40 times) is scored once, and a skipped one listed once; a file that a
    directory skips (its suffix) but that is also named itself is scored."""
    files: dict[str, str] = {}  # real path -> the path as first given
    skipped: list[Skipped] = []
    for spec in specs:
        found, problems = _expand_one(spec, unit)
        for path in found:
            files.setdefault(os.path.realpath(path), path)
        skipped += problems
    listed: dict[str, Skipped] = {}  # each skipped path once, as each file is scored once
    for entry in skipped:
        key = os.path.realpath(entry.path)
        if key not in files:
            listed.setdefault(key, entry)
    return list(files.values()), list(listed.values())


def _expand_one(spec: str, unit: str) -> tuple[list[str], list[Skipped]]:
    path = Path(spec)
    if path.is_dir():
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        empty = f"directory {spec} holds no files"
        folders = [Skipped(str(p), _NOT_SEARCHED.format(p=p, unit=unit)) for p in entries if p.is_dir()]
    elif path.is_file() or not any(ch in spec for ch in "*?["):
        # an existing file first: "[HD] clip.mp4" is a real name, not a pattern matching "H.mp4" or "D.mp4"
        return [spec], []
    else:
        # the folders a pattern matches are not inputs: `clips/**` matches each folder besides its files
        entries = sorted(Path(p) for p in glob.glob(_literal_folders(spec), recursive=True))
        empty = "no such file, and as a pattern it matches no file"
        folders = []
    files = [p for p in entries if not p.is_dir()]
    if not files and not folders:
        return [], [Skipped(spec, empty)]
    suffixes = SUFFIXES[unit]
    # Why report a directory's folders and the other suffixes: a researcher's subfolder of clips, or .wmv
    # and .mpg files, must not vanish unsaid. A broken link keeps its suffix, and the decoder reports it.
    kept = [str(p) for p in files if p.suffix.lower() in suffixes]
    article = "an" if unit == "image" else "a"
    why = f"not {article} {unit} suffix ({', '.join(suffixes)}); name the file itself to try it"
    return kept, folders + [Skipped(str(p), why) for p in files if p.suffix.lower() not in suffixes]


def _literal_folders(pattern: str) -> str:
    """`pattern` with its longest leading folder that exists escaped, so that "clips [HD]/*.mp4" matches the
    .mp4 files of the folder "clips [HD]". Why: glob read "[HD]" as "H or D", and the pattern matched no
    file; the existing folder is what the user named, as an existing file is (see _expand_one)."""
    parts = Path(pattern).parts
    for end in range(len(parts) - 1, 0, -1):
        head = os.path.join(*parts[:end])
        if any(ch in head for ch in "*?[") and os.path.isdir(head):
            return os.path.join(glob.escape(head), *parts[end:])
    return pattern


# a directory's subfolders are not entered: a folder of outputs or of frames must not be scored by surprise
_NOT_SEARCHED = "a folder, not searched: give it with --{unit} too, or a pattern such as '{p}/**/*'"


def read_texts(texts: list[str], texts_file: str | None) -> list[str]:
    """--text values, then the non-blank lines of --texts-file (UTF-8, a leading BOM dropped); raises
    OSError if it cannot be read and UnicodeDecodeError if it is not UTF-8."""
    out = list(texts)
    if texts_file:
        lines = Path(texts_file).read_text(encoding="utf-8-sig").splitlines()
        out += [line.strip() for line in lines if line.strip()]
    return out


class FileSource(VideoSource):
    """VideoSource over the user's files: a video's id is its path, so no video_dir lookup is needed.

    Decodes with PyAV whatever the run's backend: DALI decodes whole loader batches and the frame store
    holds the run's own videos only."""

    def __init__(self, data, norm):
        # video_dir "." only passes VideoSource's start-up check; key() never looks there
        cfg = dataclasses.replace(data, backend="pyav", frame_store="", video_dir=".", frame_cache_size=0)
        super().__init__(cfg, norm, train=False)

    def key(self, video_id: str) -> str:
        return video_id


def clip_frames(source: FileSource, path: str, device: torch.device) -> torch.Tensor:
    """float32 [1, N, T, 3, L, L]: the video's Ntest clips, sampled, decoded and normalized as the
    evaluation loader does (epoch 0: evaluation's; the uniform strategy does not use it anyway)."""
    from clipbert.data.loader import finish_frames

    indices = source.indices(path, epoch=0)  # [N, T]
    padded, hw = source.frames(path, indices)  # uint8 [N, T, 3, L, L], content (h, w)
    batch = {"frames": padded[None], "frames_hw": torch.tensor([hw], dtype=torch.int64)}
    return finish_frames(batch, source.norm, device)["frames"]


def image_frames(
    path: str, size: int, norm, device: torch.device, orientation: str = "stored"
) -> torch.Tensor:
    """float32 [1, 1, 1, 3, L, L]: an image as the image tasks' datasets load it (one clip of one frame, in
    the run's data.image_orientation), normalized as their loader does."""
    from clipbert.data.loader import finish_frames

    padded, hw = load_image(path, size, orientation)  # uint8 [1, 1, 3, L, L], content (h, w)
    batch = {"frames": padded[None], "frames_hw": torch.tensor([hw], dtype=torch.int64)}
    return finish_frames(batch, norm, device)["frames"]


def iter_clips(
    load: Callable[[str], torch.Tensor], paths: list[str], skipped: list[Skipped], unit: str = "video"
) -> Iterator[tuple[str, torch.Tensor]]:
    """(path, load(path): frames [1, N, T, 3, L, L]) of each readable file; the others are appended to
    `skipped`.

    Why catch every error of a file: a user's file can fail in ways no training video did (PyAV, OS or
    index errors besides VideoDecodeError), and one bad file must not lose the other files' results."""
    from clipbert.data.decoders import VideoDecodeError
    from clipbert.progress import progress_bar

    bar = progress_bar(paths, desc=f"{unit}s", unit=unit, disable=len(paths) < PROGRESS_FROM, leave=False)
    for path in bar:
        if not _utf8(path):  # os.listdir keeps a Latin-1 name's bytes as surrogates; the decoders take UTF-8
            skipped.append(Skipped(path, NOT_UTF8))
            continue
        try:
            frames = load(path)
        except VideoDecodeError as err:
            skipped.append(Skipped(path, err.reason))
            continue
        except Exception as err:  # any other failure of this file: see the docstring
            skipped.append(Skipped(path, f"{type(err).__name__}: {err}"))
            continue
        yield path, frames


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
