"""The user's inputs: video or image paths (files, directories, globs), texts, and each video's Ntest clips
(or each image, as one clip of one frame) as the model's evaluation sees them (PyAV decoding, the run's test
sampling, the loader's normalization)."""

from __future__ import annotations

import dataclasses
import glob
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from clipbert.data.video_source import VIDEO_SUFFIXES, VideoSource, load_image

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

    A directory gives its files, a pattern with * ? or [ its matches, sorted; a plain path is kept as it
    is, so a missing file is reported by the decoder like any other bad input."""
    files: list[str] = []
    skipped: list[Skipped] = []
    for spec in specs:
        found, problems = _expand_one(spec, unit)
        files += found
        skipped += problems
    return list(dict.fromkeys(files)), skipped


def _expand_one(spec: str, unit: str) -> tuple[list[str], list[Skipped]]:
    path = Path(spec)
    if path.is_dir():
        entries = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        empty = f"directory {spec} holds no files"
    elif any(ch in spec for ch in "*?["):
        entries = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
        empty = f"pattern {spec} matches no file"
    else:
        return [spec], []
    if not entries:
        return [], [Skipped(spec, empty)]
    suffixes = SUFFIXES[unit]
    kept = [str(p) for p in entries if p.suffix.lower() in suffixes]
    # Why report the rest: a researcher's .m4v or .mpg files must not vanish from a directory unsaid
    article = "an" if unit == "image" else "a"
    why = f"not {article} {unit} suffix ({', '.join(suffixes)}); name the file itself to try it"
    return kept, [Skipped(str(p), why) for p in entries if p.suffix.lower() not in suffixes]


def read_texts(texts: list[str], texts_file: str | None) -> list[str]:
    """--text values, then the non-blank lines of --texts-file (raises OSError if it cannot be read)."""
    out = list(texts)
    if texts_file:
        lines = Path(texts_file).read_text(encoding="utf-8").splitlines()
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


def image_frames(path: str, size: int, norm, device: torch.device) -> torch.Tensor:
    """float32 [1, 1, 1, 3, L, L]: an image as the image tasks' datasets load it (one clip of one frame),
    normalized as their loader does."""
    from clipbert.data.loader import finish_frames

    padded, hw = load_image(path, size)  # uint8 [1, 1, 3, L, L], content (h, w)
    batch = {"frames": padded[None], "frames_hw": torch.tensor([hw], dtype=torch.int64)}
    return finish_frames(batch, norm, device)["frames"]


def iter_clips(
    load: Callable[[str], torch.Tensor], paths: list[str], skipped: list[Skipped], unit: str = "video"
) -> Iterator[tuple[str, torch.Tensor]]:
    """(path, load(path): frames [1, N, T, 3, L, L]) of each readable file; the others are appended to
    `skipped`.

    Why catch every error of a file: a user's file can fail in ways no training video did (PyAV, OS or
    index errors besides VideoDecodeError), and one bad file must not lose the other files' results."""
    from tqdm import tqdm

    from clipbert.data.decoders import VideoDecodeError

    bar = tqdm(paths, desc=f"{unit}s", unit=unit, disable=len(paths) < PROGRESS_FROM, leave=False)
    for path in bar:
        try:
            frames = load(path)
        except VideoDecodeError as err:
            skipped.append(Skipped(path, err.reason))
            continue
        except Exception as err:  # any other failure of this file: see the docstring
            skipped.append(Skipped(path, f"{type(err).__name__}: {err}"))
            continue
        yield path, frames
