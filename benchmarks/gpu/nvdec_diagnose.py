"""Which frames and colours does DALI's NVDEC path return for H.264? A diagnostic for the GPU machine.

History. On the H100 (2026-11-26) the DALI GPU loader on the tiny H.264 synthetic set differed from PyAV by
7.6 and 10.2 mean grey levels. The third session (2026-11-27) ran this script and found the cause: DALI's
process-wide NVDEC decoder cache reuses a decoder created for an uncropped video (64x48) for a cropped video
of the same coded size (64x36, coded 64x48), and then reads the chroma plane at the wrong rows. Only the two
64x36 samples decoded after the 64x48 video were wrong; the one decoded before it was right.
dali_pipelines/routing.py's NvdecCacheGuard now sends such videos to PyAV. The checks:

1. cache: a cropped painted video (96x72, coded 96x80) decoded on a fresh decoder, then an uncropped one of
   its coded size (96x80), then the cropped one again, each against PyAV, beside the guard's prediction.
   Runs first, before the other checks put decoders into DALI's cache;
2. raw: fn.decoders.video alone, several sizes: the decoded shape and the painted indices;
3. painted: painted videos through DaliVideoDecoder(device="gpu") with ascending, descending, repeated and
   random index patterns: the index read back from each frame against the one requested;
4. synthetic: the tiny synthetic H.264 videos: for each frame DALI returns, the PyAV frame it is closest to
   and the distance, beside the distance to the frame requested;
5. loader: the DALI loader against the PyAV loader on the tiny synthetic set (the failing test's setting),
   with the videos the guard sent to PyAV;
6. seek: what one frame costs against its position, from the whole file and from the file cut by
   dali_pipelines/trim.py. DALI's CPU decoder decodes from the start of the file for every sample (frame 299
   of a GOP-30 video costs 47x frame 0); this says whether NVDEC does too, and what the cut saves. (H200,
   2026-11-27: it does; frame 299 29.9 ms whole, 10.1 ms cut, and about 9 ms a sample whatever it decodes.)
7. pack: that fixed cost against packing (dali_pipelines/pack.py): PACK_ROWS one-frame cuts of the seek video
   decoded as that many DALI samples, then as one pack; ms per frame each way, and the painted indices.

    python3 benchmarks/gpu/nvdec_diagnose.py --out $OUT/nvdec_diagnose.json

It writes one JSON report and prints a summary; exit status 0 whether or not the frames match.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import av
import numpy as np
import torch

from clipbert.data.decoders.pyav import PyAVDecoder
from clipbert.data.painted import read_index, write_painted_video
from clipbert.data.preprocess import IMAGENET_RGB, preprocess_frames, resized_hw
from dali_pipelines.common import read_bytes
from dali_pipelines.routing import NvdecCacheGuard, nvdec_cache_guard
from dali_pipelines.video import DaliVideoDecoder

# (height, width, gop). Heights 36, 120 and 360 are not multiples of 16, so H.264 stores them with a crop
# (360p is the commonest web video size); the tiny synthetic set that failed has 64x36 videos.
SIZES = (
    (48, 64, 12),
    (36, 64, 12),
    (144, 192, 12),
    (144, 192, 30),
    (120, 200, 12),
    (240, 320, 30),
    (360, 640, 30),
)
# The seek check's video: the data benchmark's (320x240, 30 fps, 10 s, GOP 30), and the frames it times.
SEEK_VIDEO = dict(num_frames=300, fps=30, height=240, width=320, gop=30)
SEEK_FRAMES = (0, 30, 150, 299)
SEEK_BATCH, SEEK_REPEATS = 8, 3
PACK_ROWS = 8
PATTERNS = {
    "ascending": [[2, 3], [10, 11], [20, 21], [30, 31]],
    "descending": [[31, 30], [21, 20], [11, 10], [3, 2]],
    "repeated": [[5, 5], [5, 5], [0, 0], [39, 39]],
    "random": [[33, 7], [18, 19], [0, 25], [12, 4]],
}


def to_rgb(frames: torch.Tensor) -> np.ndarray:
    """[..., 3, L, L] normalized (IMAGENET_RGB) -> uint8 [..., L, L, 3]."""
    mean = torch.tensor(IMAGENET_RGB.mean).view(3, 1, 1)
    std = torch.tensor(IMAGENET_RGB.std).view(3, 1, 1)
    return (frames.cpu() * std + mean).round().clamp(0, 255).to(torch.uint8).movedim(-3, -1).numpy()


def note_decoded(device: str, codec: str, height: int, width: int) -> None:
    """Tell the process's NVDEC cache guard about a GPU decode made outside the DALI loader, so that the
    loader check's guard knows every decoder in DALI's cache."""
    if device == "gpu":
        nvdec_cache_guard(0).check([(codec, height, width)])


def grey_levels(out: torch.Tensor, path: str, indices: np.ndarray, size: int) -> float:
    """Mean absolute difference, in grey levels, between DALI's frames and PyAV's preprocessed ones."""
    raw = PyAVDecoder().decode(path, indices.reshape(-1, indices.shape[-1]))
    ref = preprocess_frames(raw.reshape(-1, *raw.shape[-3:]), size, IMAGENET_RGB).view(*out.shape)
    std = torch.tensor(IMAGENET_RGB.std).view(3, 1, 1)
    return round(float(((out.cpu() - ref) * std).abs().mean()), 2)


def cache_checks(root: Path, device: str, codec: str) -> list[dict]:
    """Cropped, uncropped of the same coded size, cropped again: does the third decode go wrong, as the
    guard predicts? Same encoder settings for both videos, so DALI's cache sees the same surface count."""
    cropped = write_painted_video(root / "c96x72", 40, fps=10, height=72, width=96, codec=codec, gop=12)
    full = write_painted_video(root / "c96x80", 40, fps=10, height=80, width=96, codec=codec, gop=12)
    guard = NvdecCacheGuard()  # a fresh model of DALI's cache, replayed over this sequence only
    indices = np.array([[[2, 3], [20, 21]]])
    rows = []
    for step, (path, height) in enumerate([(cropped, 72), (full, 80), (cropped, 72)]):
        (predicted,) = guard.check([(codec, height, 96)])
        note_decoded(device, codec, height, 96)
        decoder = DaliVideoDecoder(96, IMAGENET_RGB, 1, device=device, order="none")
        row = dict(step=step, size=f"96x{height}", guard_sends_to_pyav=predicted is not None)
        try:
            out = decoder.decode([read_bytes(path)], indices, [(height, 96)])
            h, _ = resized_hw(height, 96, 96)
            got = [[read_index(f[:h]) for f in clip] for clip in to_rgb(out)[0]]
            row.update(
                grey_levels_to_pyav=grey_levels(out, path, indices, 96),
                indices_match=got == [[2, 3], [20, 21]],
            )
        except Exception as err:
            row.update(error=f"{type(err).__name__}: {err}")
        rows.append(row)
    return rows


def painted_checks(root: Path, device: str, codec: str) -> list[dict]:
    rows = []
    for height, width, gop in SIZES:
        note_decoded(device, codec, height, width)
        path = write_painted_video(
            root / f"p{height}x{width}g{gop}", 40, fps=10, height=height, width=width, codec=codec, gop=gop
        )
        for order in ("none", "frames"):
            decoder = DaliVideoDecoder(width, IMAGENET_RGB, 1, device=device, order=order)
            for name, pattern in PATTERNS.items():
                indices = np.array([pattern])  # [1, N, T]
                row = dict(size=f"{width}x{height}", gop=gop, order=order, pattern=name)
                try:
                    out = decoder.decode([read_bytes(path)], indices, [(height, width)])
                    h, _ = resized_hw(height, width, width)
                    got = [[read_index(f[:h]) for f in clip] for clip in to_rgb(out)[0]]
                    row.update(requested=pattern, got=got, match=got == pattern)
                except Exception as err:  # report every case, whatever fails
                    row.update(error=f"{type(err).__name__}: {err}")
                rows.append(row)
    return rows


def raw_checks(root: Path, device: str, codec: str) -> list[dict]:
    """fn.decoders.video alone, no resize: the shape of what the decoder hands on, and the frames' indices."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    from dali_pipelines.common import build_pipeline, to_torch

    def graph():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        return fn.decoders.video(encoded, frames=frames, device="mixed" if device == "gpu" else "cpu")

    pipe = build_pipeline(graph, 1, 2, device, 0)
    torch_device = torch.device("cuda" if device == "gpu" else "cpu")
    rows = []
    for height, width, gop in SIZES:
        path = write_painted_video(
            root / f"raw{height}x{width}g{gop}", 40, fps=10, height=height, width=width, codec=codec, gop=gop
        )
        wanted = np.array([33, 7, 0, 25], dtype=np.int32)
        note_decoded(device, codec, height, width)
        try:
            pipe.feed_input("encoded", [read_bytes(path)])
            pipe.feed_input("frames", [wanted])
            out = to_torch(pipe.run()[0], torch_device).cpu().numpy()  # [1, F, H', W', 3]
            got = [read_index(f[:height, :width]) for f in out[0]]
            rows.append(
                dict(
                    size=f"{width}x{height}",
                    gop=gop,
                    shape=list(out.shape[1:]),
                    expected_shape=[len(wanted), height, width, 3],
                    requested=wanted.tolist(),
                    got=got,
                )
            )
        except Exception as err:
            rows.append(dict(size=f"{width}x{height}", gop=gop, error=f"{type(err).__name__}: {err}"))
            # a new pipeline for the next size: a failed run may leave this one's decoder or queue broken,
            # and the later sizes (HEVC below NVDEC's minimum fails first) would report its error, not theirs
            try:
                pipe = build_pipeline(graph, 1, 2, device, 0)
            except Exception as build_err:  # keep the rows so far: the diagnosis is what this run is for
                rows.append(dict(error=f"no new pipeline: {type(build_err).__name__}: {build_err}"))
                break
    return rows


def _timed_decoder(root: Path, name: str, device: str, codec: str, batch: int):
    """The seek video, painted, and a pipeline of fn.decoders.video alone (bytes and frame indices in).
    Returns (path, run): run(encoded, frames, per) decodes one batch SEEK_REPEATS + 1 times (the first warms
    the decoder cache) and returns (median ms per `per`, the painted index of every frame returned, in order).
    """
    import time

    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    from dali_pipelines.common import build_pipeline, to_torch_samples

    def graph():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        return fn.decoders.video(encoded, frames=frames, device="mixed" if device == "gpu" else "cpu")

    pipe = build_pipeline(graph, batch, 4, device, 0)
    torch_device = torch.device("cuda" if device == "gpu" else "cpu")
    path = write_painted_video(root / name, codec=codec, **SEEK_VIDEO)
    note_decoded(device, codec, SEEK_VIDEO["height"], SEEK_VIDEO["width"])

    def run(encoded: list[np.ndarray], frames: list, per: int) -> tuple[float, list[int]]:
        times = []
        for _ in range(SEEK_REPEATS + 1):
            start = time.perf_counter()
            pipe.feed_input("encoded", encoded)
            pipe.feed_input("frames", [np.asarray(f, dtype=np.int32).ravel() for f in frames])
            outs = to_torch_samples(pipe.run()[0], torch_device)  # per sample [F, H, W, 3]
            times.append((time.perf_counter() - start) / per * 1e3)
        got = [read_index(frame.cpu().numpy()) for out in outs for frame in out]
        return float(np.median(times[1:])), got

    return path, run


def seek_checks(root: Path, device: str, codec: str) -> list[dict]:
    """ms per sample to decode one frame at each of SEEK_FRAMES, whole file against trimmed file."""
    from dali_pipelines.trim import trim_video

    path, run = _timed_decoder(root, "seek", device, codec, SEEK_BATCH)
    rows = []
    for frame in SEEK_FRAMES:
        full_ms, full_got = run([read_bytes(path)] * SEEK_BATCH, [[frame]] * SEEK_BATCH, SEEK_BATCH)
        cut, (new_index,) = trim_video(path, np.array([frame]))
        trim_ms, trim_got = run([cut] * SEEK_BATCH, [[new_index]] * SEEK_BATCH, SEEK_BATCH)
        rows.append(
            dict(
                frame=frame,
                full_ms=round(full_ms, 2),
                trim_ms=round(trim_ms, 2),
                full_match=full_got == [frame] * SEEK_BATCH,
                trim_match=trim_got == [frame] * SEEK_BATCH,
                trim_bytes=int(cut.size),
            )
        )
    return rows


def pack_checks(root: Path, device: str, codec: str) -> list[dict]:
    """ms per frame for PACK_ROWS one-frame cuts decoded as separate DALI samples, then as one pack."""
    from dali_pipelines.pack import pack_cuts
    from dali_pipelines.trim import trim_video

    path, run = _timed_decoder(root, "pack", device, codec, PACK_ROWS)
    wanted = np.linspace(0, SEEK_VIDEO["num_frames"] - 1, PACK_ROWS).round().astype(int)
    cuts = [trim_video(path, np.array([frame])) for frame in wanted]
    (pack,) = pack_cuts([c for c, _ in cuts], [n for _, n in cuts], PACK_ROWS)
    single_ms, single_got = run([c for c, _ in cuts], [n for _, n in cuts], PACK_ROWS)
    pack_ms, pack_got = run([pack.data], [pack.indices], PACK_ROWS)
    return [
        dict(
            rows=PACK_ROWS,
            frames=wanted.tolist(),
            single_ms_per_frame=round(single_ms, 2),
            pack_ms_per_frame=round(pack_ms, 2),
            single_match=single_got == wanted.tolist(),
            pack_match=pack_got == wanted.tolist(),
            pack_bytes=int(pack.data.size),
        )
    ]


def synthetic_checks(root: Path, device: str, codec: str) -> list[dict]:
    from clipbert.data import synthetic

    synthetic.generate(root / "syn", 4, 1, codec=codec, size="tiny", workers=1)
    rows = []
    for path in sorted((root / "syn" / "videos").iterdir())[:4]:
        with av.open(str(path)) as container:
            count = sum(1 for _ in container.decode(video=0))  # WebM headers carry no frame count
        all_frames = PyAVDecoder().decode(str(path), np.arange(count)[None])  # [1, F, H, W, 3] uint8
        height, width = all_frames.shape[-3:-1]
        size = max(height, width)
        note_decoded(device, codec, height, width)
        reference = preprocess_frames(
            all_frames.reshape(-1, height, width, 3), size, IMAGENET_RGB
        )  # [F, 3, L, L]
        for order in ("none", "frames"):
            decoder = DaliVideoDecoder(size, IMAGENET_RGB, 1, device=device, order=order)
            pattern = [[min(count - 1, 30), min(count - 1, 31)], [2, 3], [count // 2, count // 2 + 1]]
            out = decoder.decode([read_bytes(str(path))], np.array([pattern]), [(height, width)])[0].cpu()
            std = torch.tensor(IMAGENET_RGB.std).view(3, 1, 1)
            for clip_i, clip in enumerate(pattern):
                for t, want in enumerate(clip):
                    dist = ((reference - out[clip_i, t]) * std).abs().mean(dim=(1, 2, 3))  # [F]
                    best = int(dist.argmin())
                    rows.append(
                        dict(
                            video=path.name,
                            size=f"{width}x{height}",
                            frames=count,
                            order=order,
                            requested=want,
                            closest=best,
                            offset=best - want,
                            grey_levels_to_requested=round(float(dist[want]), 2),
                            grey_levels_to_closest=round(float(dist[best]), 2),
                        )
                    )
    return rows


def loader_checks(root: Path, device: str, codec: str) -> list[dict]:
    """The failing test's setting: the DALI loader against the PyAV loader on the tiny synthetic set, batch by
    batch. For each sample, the distance to the PyAV sample at the same place and the nearest PyAV sample of
    the whole epoch: a nearest sample elsewhere means samples were mixed up (ordering or a buffer race), a
    large distance everywhere means wrong frames or pixels."""
    from clipbert.data import synthetic
    from clipbert.data.config import DataConfig
    from clipbert.data.datasets import build_dataset
    from clipbert.data.loader import build_loader
    from clipbert.data.tokenizer import build_tokenizer

    data = root / "loader_set"
    synthetic.generate(data, 12, 1, codec=codec, size="tiny", workers=1)
    std = torch.tensor(IMAGENET_RGB.std).view(3, 1, 1)
    torch_device = "cuda" if device == "gpu" else "cpu"
    rows = []
    for order in ("none", "frames"):
        epochs = {}
        for backend in ("dali", "pyav"):
            cfg = DataConfig(
                ann_dir=str(data / "annotations"),
                video_dir=str(data / "videos"),
                image_size=32,
                num_clips=2,
                num_test_clips=2,
                frames_per_clip=2,
                num_workers=0,
                seed=5,
                backend=backend,
                dali_pipelines=2,
                dali_order=order,
            )
            dataset = build_dataset("tgif_action", "train", cfg, build_tokenizer(), IMAGENET_RGB)
            loader = build_loader(dataset, cfg, 3, True, rank=0, world_size=1, device=torch_device)
            loader.sampler.set_epoch(1)
            epochs[backend] = [(b["index"].tolist(), b["frames"].cpu(), b["bad_videos"]) for b in loader]
        pyav_all = torch.cat([frames for _, frames, _ in epochs["pyav"]])  # [S, N, T, 3, L, L]
        pyav_index = [i for index, _, _ in epochs["pyav"] for i in index]
        for (index, frames, bad), (_, ref, _) in zip(epochs["dali"], epochs["pyav"], strict=True):
            for k, sample in enumerate(frames):
                dist = ((pyav_all - sample) * std).abs().mean(dim=(1, 2, 3, 4, 5))  # [S]
                best = int(dist.argmin())
                same = float(((ref[k] - sample) * std).abs().mean())
                rows.append(
                    dict(
                        order=order,
                        index=index[k],
                        grey_levels_same_place=round(same, 2),
                        nearest_pyav_index=pyav_index[best],
                        grey_levels_nearest=round(float(dist[best]), 2),
                        bad_videos=bad,
                    )
                )
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="nvdec_diagnose.json")
    parser.add_argument(
        "--device", default="gpu", choices=["gpu", "cpu"], help="cpu: a smoke run of the script"
    )
    parser.add_argument("--codec", default=None, help="default h264 on the GPU, vp9 on the CPU")
    args = parser.parse_args(argv)
    codec = args.codec or ("h264" if args.device == "gpu" else "vp9")
    if args.device == "gpu" and not torch.cuda.is_available():
        raise SystemExit("nvdec_diagnose: needs a CUDA device (NVDEC)")
    name = torch.cuda.get_device_name() if args.device == "gpu" else "cpu"
    report = {"device": name, "codec": codec}
    with tempfile.TemporaryDirectory() as tmp:
        for name, check in (
            ("cache", cache_checks),
            ("raw", raw_checks),
            ("painted", painted_checks),
            ("synthetic", synthetic_checks),
            ("loader", loader_checks),
            ("seek", seek_checks),
            ("pack", pack_checks),
        ):
            try:
                report[name] = check(Path(tmp), args.device, codec)
            except Exception as err:
                report[name] = {"error": f"{type(err).__name__}: {err}"}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    for name in ("cache", "raw", "painted", "synthetic", "loader", "seek", "pack"):
        rows = report[name]
        if isinstance(rows, dict):
            print(f"{name}: {rows['error']}")
            continue
        for row in rows:
            print(name, {k: v for k, v in row.items() if k not in ("requested",)})
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
