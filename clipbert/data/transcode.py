"""Re-encode videos for fast sparse decoding: lower resolution (longer side <= max_side) and a short GOP.

Sparse sampling seeks to a key frame and decodes forward to each wanted frame, so the cost of a sample grows
with the GOP length and the frame size. A copy with GOP 4 and the longer side at L decodes several times
faster on NVDEC and on the CPU; the frame indices and fps stay those of the source.
`python -m clipbert.data.transcode --videos DIR --out DIR2 --max-side 448 --gop 4`
"""

from __future__ import annotations

import argparse
import os
import sys
from fractions import Fraction
from pathlib import Path

import av
import torch

from .build_frame_store import list_videos
from .decoders.base import VideoDecodeError, VideoInfo
from .decoders.pyav import EDGE_TOLERANCE_FRAMES, PyAVDecoder, display_rotation, upright
from .preprocess import resize_frames

ENCODERS = {"h264": ("libx264", ".mp4", {"preset": "veryfast", "crf": "20", "bf": "0"})}


def transcode(src: str | os.PathLike, dst_dir: str | os.PathLike, max_side: int = 0, gop: int = 4) -> str:
    """Write `dst_dir/<stem>.mp4` (H.264, every frame kept); returns its path.

    The file appears only once complete (written as a hidden .partial, then renamed), so a folder that holds
    `<stem>.mp4` holds a whole copy: the CLI resumes by skipping those. A source that does not decode raises
    (VideoDecodeError as the decoders report it, or PyAV's error) and leaves nothing behind.

    Why probe first: a cut-off WebM decodes up to its cut without an error, so its copy was a whole-looking
    shorter video that no probe could flag any more; and a variable-rate source (a GIF) is indexed at its mean
    rate, which the copy must keep for clips to span the same seconds."""
    encoder, _, options = ENCODERS["h264"]
    dst = copy_path(src, dst_dir)
    if dst.resolve() == Path(src).resolve():
        raise ValueError(f"transcode would overwrite its source {src}: choose another output folder")
    info = PyAVDecoder(probe_cache_bytes=0).probe(os.fspath(src))  # VideoDecodeError: truncated, no frames...
    partial = dst.with_name(f".{dst.name}.partial")
    try:
        # metadata_errors: a Latin-1 tag must not stop a readable video (as decoders/pyav.open_video)
        with (
            av.open(str(src), metadata_errors="replace") as source,
            av.open(str(partial), "w", format="mp4") as out,
        ):
            written = _copy_frames(source, out, encoder, options, max_side, gop, info)
        if written != info.num_frames:  # a damaged tail: frames the probe counts did not decode
            raise VideoDecodeError(os.fspath(src), f"{written} of its {info.num_frames} frames decode")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.rename(dst)
    return str(dst)


def copy_path(src: str | os.PathLike, dst_dir: str | os.PathLike) -> Path:
    """Where `transcode` writes the copy of `src`."""
    return Path(dst_dir) / (Path(src).stem + ENCODERS["h264"][1])


def _copy_frames(source, out, encoder: str, options: dict, max_side: int, gop: int, info: VideoInfo) -> int:
    """Encode the source's shown frames at its probe's fps; returns how many were written."""
    in_stream = source.streams.video[0]
    stream = out.add_stream(encoder, rate=Fraction(info.fps).limit_denominator(1 << 16))  # 30000/1001 stays
    stream.options = dict(options)
    stream.codec_context.gop_size = gop
    stream.pix_fmt = "yuv420p"
    i, last_pts, first_size = 0, None, None
    for frame in source.decode(in_stream):
        # as the decoder counts frames: one without a timestamp, or a second at one time, is not a frame
        if frame.pts is None or (last_pts is not None and frame.pts <= last_pts):
            continue
        last_pts = frame.pts
        # upright: the copy carries no display matrix, so a phone's portrait video would stay sideways
        rgb = torch.from_numpy(upright(frame.to_ndarray(format="rgb24"), display_rotation(frame)))
        # Why: the encoder silently crops or scales a frame of another size to the first one's, so a video the
        # decoders reject (a resolution switch, a spliced file) became a readable copy with wrong frames.
        first_size = first_size or rgb.shape[:2]
        if rgb.shape[:2] != first_size:
            (h0, w0), (h, w) = first_size, rgb.shape[:2]
            why = f"frame size changes mid-stream ({h0}x{w0} at frame 0, {h}x{w} at frame {i})"
            raise VideoDecodeError(str(source.name), why)
        if max_side and max(rgb.shape[:2]) > max_side:
            rgb = resize_frames(rgb[None], max_side)[0].to(torch.uint8).permute(1, 2, 0)
        if i == 0:  # H.264 with yuv420p needs even sides
            stream.height, stream.width = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
        rgb = rgb[: stream.height, : stream.width].contiguous().numpy()
        out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        i += 1
    # a frame or two the header over-counts: the last frame stands in, as the decoder returns it for them
    missing = info.num_frames - i if i else 0  # none decoded: nothing to stand in, and transcode reports it
    for _ in range(missing if missing <= EDGE_TOLERANCE_FRAMES else 0):
        out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        i += 1
    out.mux(stream.encode())
    return i


def main(argv: list[str] | None = None) -> int:
    """Transcode a folder with a progress bar. Resumes (copies already written are kept), and a video that
    does not decode is skipped, counted and named at the end instead of stopping the job. Exit code 1 when
    any was skipped, so a script notices; 2 for a bad flag, a missing or empty --videos folder or an --out
    that cannot be created; 130 when stopped (Ctrl-C: the copy being written is removed)."""
    from clipbert.progress import progress_bar

    parser = argparse.ArgumentParser(
        prog="python -m clipbert.data.transcode", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--videos", required=True, help="folder of source videos")
    parser.add_argument("--out", required=True, help="folder for the copies, <stem>.mp4 (H.264)")
    parser.add_argument("--max-side", type=int, default=0, help="longer side at most this (0: keep the size)")
    parser.add_argument("--gop", type=int, default=4, help="key frame every this many frames (default: 4)")
    args = parser.parse_args(argv)
    # A negative --max-side failed every video with a bare IndexError; a --gop below 1 was passed to x264,
    # which then used its own long GOP: a silent success that defeats the purpose of the copy.
    if args.max_side < 0:
        parser.error(f"argument --max-side: must be 0 (keep the size) or more, got {args.max_side}")
    if args.gop < 1:
        parser.error(f"argument --gop: must be at least 1, got {args.gop}")
    # Checked before --out is created: a typo in --videos left an empty --out folder and a traceback.
    if not Path(args.videos).is_dir():
        parser.error(f"argument --videos: {args.videos} is not a folder")
    videos = list_videos(args.videos)
    if not videos:  # "transcoded 0 video(s)", exit 0, hid a wrong folder
        parser.error(f"argument --videos: no video files in {args.videos}")
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as err:  # --out is a file or lies under one, or is not writable
        parser.error(f"argument --out: cannot create folder {args.out}: {err}")
    todo = [p for p in videos if not copy_path(p, args.out).is_file()]
    if len(todo) < len(videos):
        print(f"{len(videos) - len(todo)} of {len(videos)} already transcoded in {args.out}: skipped")
    bad = {}
    done = 0
    try:
        for path in progress_bar(todo, desc="transcode", unit="video"):
            try:
                transcode(path, args.out, args.max_side, args.gop)
                done += 1
            # IndexError: no video stream; VideoDecodeError: the source's probe (a cut-off file, no frames)
            except (av.FFmpegError, IndexError, ValueError, OSError, VideoDecodeError) as err:
                bad[path.name] = f"{type(err).__name__}: {err}"
    except KeyboardInterrupt:  # transcode removed its .partial: every <stem>.mp4 left is whole
        print(f"\ninterrupted after {done} of {len(todo)} video(s); rerun to resume", file=sys.stderr)
        return 130
    print(f"transcoded {len(todo) - len(bad)} video(s) into {args.out}")
    if bad:
        print(f"{len(bad)} video(s) could not be transcoded and were skipped:", file=sys.stderr)
        for name, reason in sorted(bad.items()):
            print(f"  {name}: {reason}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
