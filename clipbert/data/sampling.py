"""Sparse clip sampling: which frames of a video a sample reads, as a pure function of its inputs.

A clip is `clip_seconds` long, i.e. `clip_len = max(1, round(clip_seconds * fps))` frames. Its T frames are
spread evenly from its first to its last frame (T = 1 takes the clip's centre frame).

Strategies:
- `rand` (training, the paper's sparse sampling): N clip starts drawn uniformly from the valid range
  [0, num_frames - clip_len], then sorted so clips keep their temporal order.
- `uniform` (inference with Ntest clips): the video is cut into N equal segments and one clip is centred in
  each, so N clips cover the whole video evenly.
- `middle`: one clip centred in the video. The original ClipBERT code started this clip at one third of the
  video instead of centring it; we centre it.

Videos shorter than a clip repeat their edge frames: indices are clamped to [0, num_frames - 1].
"""

from __future__ import annotations

import numpy as np

STRATEGIES = ("rand", "uniform", "middle")


def rng_for(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample: sampling depends only on (seed, epoch, index), never on workers."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def clip_length(fps: float, clip_seconds: float) -> int:
    """Frames in one clip of `clip_seconds` at `fps`."""
    return max(1, int(round(clip_seconds * fps)))


def sample_frame_indices(
    num_frames: int,
    fps: float,
    num_clips: int,
    frames_per_clip: int,
    clip_seconds: float = 1.0,
    strategy: str = "rand",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Frame indices int64 [N, T] of N clips of T frames; see the module docstring for the strategies."""
    _check_inputs(num_frames, fps, num_clips, frames_per_clip, clip_seconds, strategy)
    clip_len = clip_length(fps, clip_seconds)
    max_start = max(0, num_frames - clip_len)
    if strategy == "rand":
        if rng is None:
            raise ValueError("strategy 'rand' needs an rng (use rng_for(seed, epoch, index))")
        starts = np.sort(rng.integers(0, max_start + 1, size=num_clips))
    elif strategy == "uniform":
        centres = (np.arange(num_clips) + 0.5) * num_frames / num_clips  # segment centres, in frames
        starts = np.clip(np.floor(centres - clip_len / 2.0), 0, max_start)
    else:  # middle
        starts = np.array([max_start // 2])
    offsets = _offsets_in_clip(clip_len, frames_per_clip)  # [T]
    indices = starts.astype(np.int64)[:, None] + offsets[None, :]  # [N, T]
    return np.clip(indices, 0, num_frames - 1).astype(np.int64)


def _offsets_in_clip(clip_len: int, frames_per_clip: int) -> np.ndarray:
    if frames_per_clip == 1:
        return np.array([(clip_len - 1) // 2], dtype=np.int64)
    return np.round(np.linspace(0, clip_len - 1, frames_per_clip)).astype(np.int64)


def _check_inputs(num_frames, fps, num_clips, frames_per_clip, clip_seconds, strategy) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if int(num_frames) < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    # finite too: an infinite rate or length has no clip length in frames (round(inf) overflows)
    if not 0 < fps < float("inf"):
        raise ValueError(f"fps must be a finite number > 0, got {fps}")
    if not 0 < clip_seconds < float("inf"):
        raise ValueError(f"clip_seconds must be a finite number > 0, got {clip_seconds}")
    if num_clips < 1 or frames_per_clip < 1:
        raise ValueError(f"num_clips and frames_per_clip must be >= 1, got {num_clips}, {frames_per_clip}")
    if strategy == "middle" and num_clips != 1:
        raise ValueError(f"strategy 'middle' samples one clip; got num_clips={num_clips}")
