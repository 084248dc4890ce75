"""Re-encode videos for fast sparse decoding: lower resolution (longer side <= max_side) and a short GOP.

Sparse sampling seeks to a key frame and decodes forward to each wanted frame, so the cost of a sample grows
with the GOP length and the frame size. A copy with GOP 4 and the longer side at L decodes several times
faster on NVDEC and on the CPU; the frame indices and fps stay those of the source.
`python -m clipbert.data.transcode --videos DIR --out DIR2 --max-side 448 --gop 4`
"""

from __future__ import annotations

import argparse
import os
from fractions import Fraction
from pathlib import Path

import av
import torch

from .build_frame_store import list_videos
from .preprocess import resize_frames

ENCODERS = {"h264": ("libx264", ".mp4", {"preset": "veryfast", "crf": "20", "bf": "0"})}


def transcode(src: str | os.PathLike, dst_dir: str | os.PathLike, max_side: int = 0, gop: int = 4) -> str:
    """Write `dst_dir/<stem>.mp4` (H.264, every frame kept); returns its path."""
    encoder, suffix, options = ENCODERS["h264"]
    dst = str(Path(dst_dir) / (Path(src).stem + suffix))
    if Path(dst).resolve() == Path(src).resolve():
        raise ValueError(f"transcode would overwrite its source {src}: choose another output folder")
    with av.open(str(src)) as source, av.open(dst, "w") as out:
        in_stream = source.streams.video[0]
        rate = in_stream.average_rate or in_stream.guessed_rate
        stream = out.add_stream(encoder, rate=Fraction(rate))
        stream.options = dict(options)
        stream.codec_context.gop_size = gop
        stream.pix_fmt = "yuv420p"
        for i, frame in enumerate(source.decode(in_stream)):
            rgb = torch.from_numpy(frame.to_ndarray(format="rgb24"))
            if max_side and max(rgb.shape[:2]) > max_side:
                rgb = resize_frames(rgb[None], max_side)[0].to(torch.uint8).permute(1, 2, 0)
            if i == 0:  # H.264 with yuv420p needs even sides
                stream.height, stream.width = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
            rgb = rgb[: stream.height, : stream.width].contiguous().numpy()
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
    return dst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-side", type=int, default=0)
    parser.add_argument("--gop", type=int, default=4)
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for path in list_videos(args.videos):
        print(transcode(path, args.out, args.max_side, args.gop))


if __name__ == "__main__":
    main()
