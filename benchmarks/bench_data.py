"""Data-loading benchmark: frames/s delivered at L x L (default 448) by each backend.

Each sample is 4 clips x 2 frames of a random (rand-sampled) 1 s clip, resized, normalized and padded, as the
trainer receives it (on the GPU with --device cuda). Backends: PyAV with k DataLoader workers, the HDF5
frame store (CPU JPEG decoding with k workers, or DALI), DALI on video (CPU: VP9; GPU: H.264 on NVDEC) with
its tuning options (parallel pipelines, ascending frame order, short-GOP low-resolution copies).

    python benchmarks/bench_data.py --device cpu --num-videos 4 --seconds 4 --batches 6
    python benchmarks/bench_data.py --device cuda            # 16 H.264 videos, 320x240, 30 fps, 10 s, GOP 30

Prints a table and writes benchmarks/results/data_<device>_<date>.json (`_run2`, ... beside an earlier one).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from result_paths import unused_default  # noqa: E402  (beside this script)

from clipbert.data.build_frame_store import build_frame_store  # noqa: E402
from clipbert.data.config import DataConfig  # noqa: E402
from clipbert.data.datasets import build_dataset  # noqa: E402
from clipbert.data.loader import build_loader  # noqa: E402
from clipbert.data.painted import write_painted_video  # noqa: E402
from clipbert.data.preprocess import IMAGENET_RGB  # noqa: E402
from clipbert.data.tokenizer import build_tokenizer  # noqa: E402
from clipbert.data.transcode import transcode  # noqa: E402
from clipbert.system import usable_cpus  # noqa: E402

CLIPS, FRAMES = 4, 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--size", type=int, default=448, help="L")
    p.add_argument("--videos", help="folder of H.264 videos to use instead of generated ones")
    p.add_argument("--num-videos", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--gop", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--batches",
        type=int,
        default=20,
        help="timed batches per variant (at least 2 per worker), after a warm-up that drains prefetching",
    )
    p.add_argument("--workers", default=None, help="comma list of DataLoader workers for PyAV / frame store")
    p.add_argument("--dali-pipelines", default=None, help="comma list of parallel DALI pipelines")
    p.add_argument("--dali-threads", type=int, default=None)
    p.add_argument(
        "--dali-affine",
        default="off",
        help="comma list of on/off: pin the GPU video decoder's threads to cores (DALI's default is on)",
    )
    p.add_argument(
        "--dali-processes", default=None, help="comma list: DALI loaders in that many processes (e.g. 2,4)"
    )
    p.add_argument(
        "--dali-trim",
        default="on",
        help="comma list of on/off: workers cut each video to the packets its frames need (dali_trim)",
    )
    p.add_argument(
        "--dali-pack",
        default="1",
        help="comma list of rows per DALI sample with cut videos (dali_pack; 1: no packing), e.g. 1,8",
    )
    p.add_argument("--store-fps", type=float, default=2.0)
    p.add_argument("--only", default="", help="comma list of variant name prefixes to run")
    p.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/data_<device>_<date>.json)"
    )
    args = p.parse_args(argv)
    # Usage errors now, not after preparing the videos: --num-videos 0 was a ZeroDivisionError, --fps 0 or
    # --seconds -1 a traceback from every encoding worker, --batch-size 0 an "error" row per variant and
    # exit 0, an --out under a file a traceback after the first row was measured.
    for flag in ("size", "num_videos", "fps", "height", "width", "gop", "batch_size", "batches"):
        if getattr(args, flag) < 1:
            p.error(f"argument --{flag.replace('_', '-')}: must be at least 1, got {getattr(args, flag)}")
    for flag in ("seconds", "store_fps"):
        if not 0 < getattr(args, flag) < math.inf:  # also nan, which compares false
            p.error(
                f"argument --{flag.replace('_', '-')}: must be a positive number, got {getattr(args, flag)}"
            )
    if args.videos and not Path(args.videos).is_dir():
        p.error(f"argument --videos: {args.videos} is not a folder")
    if args.out is not None:
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            p.error(f"argument --out: cannot create folder {Path(args.out).parent}: {err}")
        if Path(args.out).is_dir():
            p.error(f"argument --out: {args.out} is a folder, not a JSON file path")
    return args


def _prepare_video(job: tuple) -> tuple[int, str, str, str | None]:
    """Worker: (source H.264, its short-GOP copy at L, VP9 for DALI on CPU or None) for video number v."""
    v, root, frames, size, given, make_vp9, max_side = job
    h264 = given or write_painted_video(root / f"src{v}", frames, codec="h264", **size)
    gop4 = transcode(h264, root / "gop4_src", max_side=max_side, gop=4)
    vp9 = write_painted_video(root / f"vp9_{v}", frames, codec="vp9", **size) if make_vp9 else None
    return v, str(h264), str(gop4), None if vp9 is None else str(vp9)


# A spawned pool takes seconds to start (each worker imports torch), more than a small set takes to encode
# here: 2 videos x 20 frames, the videos and the frame store, 10.4 s in pools against 0.4 s in this process
# (2-core dev machine, 2026-11-30), about 10 ms a frame: 1000 frames cost what two pools take to start.
IN_PROCESS_FRAMES = 1000


def _encodes_in_process(args) -> bool:
    """Whether the generated set is small enough to encode (videos and frame store) without a process pool.
    Given videos (--videos) may be of any length: they always go to the pools."""
    return not args.videos and args.num_videos * int(args.seconds * args.fps) <= IN_PROCESS_FRAMES


def make_videos(args, root: Path) -> dict[str, Path]:
    """H.264 (and VP9 for DALI on CPU) videos plus a short-GOP copy, each repeated under distinct ids.

    The videos are encoded in parallel processes: one at a time took 53 s of a 90 s step on the H100
    machine's 16 cores."""
    sets = {name: root / name for name in ("h264", "vp9", "h264_gop4")}
    for folder in sets.values():
        folder.mkdir()
    frames = int(args.seconds * args.fps)
    repeats = max(1, math.ceil((args.batches + 3) * args.batch_size / args.num_videos))
    if args.videos and not Path(args.videos).is_dir():
        raise SystemExit(f"--videos {args.videos}: not a directory")
    sources = sorted(p for p in Path(args.videos).iterdir() if p.is_file()) if args.videos else []
    if args.videos and len(sources) < args.num_videos:
        raise SystemExit(
            f"--videos {args.videos}: {len(sources)} file(s) for --num-videos {args.num_videos}; "
            f"give a folder with at least that many videos, or --num-videos {max(1, len(sources))}"
        )
    (root / "gop4_src").mkdir()
    size = dict(height=args.height, width=args.width, fps=args.fps, gop=args.gop)
    jobs = [
        (v, root, frames, size, sources[v] if sources else None, args.device != "cuda", args.size)
        for v in range(args.num_videos)
    ]
    if _encodes_in_process(args):
        made = sorted(map(_prepare_video, jobs))
    else:
        workers = max(1, min(len(jobs), usable_cpus(), 16))
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            made = sorted(pool.map(_prepare_video, jobs))
    for v, h264, gop4, vp9 in made:
        for r in range(repeats):  # distinct ids -> distinct random clips; links cost no disk
            for name, src in (("h264", h264), ("h264_gop4", gop4), ("vp9", vp9)):
                if src is not None:
                    os.link(src, sets[name] / f"v{v:02d}_{r:02d}{Path(src).suffix}")
    ids = sorted(p.stem for p in sets["h264"].iterdir())
    ann = root / "annotations"
    ann.mkdir()
    with open(ann / "msrvtt_ret_val.jsonl", "w") as f:
        f.writelines(json.dumps({"caption": "a video", "clip_name": i}) + "\n" for i in ids)
    return sets


def _switch_values(text: str, flag: str) -> list[bool]:
    values = {"on": True, "off": False}
    try:
        return [values[v.strip()] for v in text.split(",") if v.strip()]
    except KeyError as err:
        raise SystemExit(f"{flag}: each value must be on or off, got {err.args[0]!r}") from None


def _on(value: bool) -> str:
    return "on" if value else "off"


def _cut_variants(args) -> list[tuple[bool, int]]:
    """(dali_trim, dali_pack) pairs: each pack size with cut videos; uncut videos cannot pack (pack 1)."""
    try:
        packs = [int(v) for v in args.dali_pack.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--dali-pack: each value must be an integer >= 1, got {args.dali_pack!r}") from None
    if not packs or min(packs) < 1:
        raise SystemExit(f"--dali-pack: each value must be an integer >= 1, got {args.dali_pack!r}")
    trims = _switch_values(args.dali_trim, "--dali-trim")
    return [(trim, k) for trim in trims for k in (packs if trim else [1])]


def _pack_suffix(pack: int) -> str:
    return f" pack={pack}" if pack > 1 else ""


def _cut_name(trim: bool, pack: int) -> str:
    return f"trim={_on(trim)}{_pack_suffix(pack)}"


def variants(args, sets, store):
    cpu = args.device == "cpu"
    workers = [int(w) for w in (args.workers or ("0,2" if cpu else "4,8,16")).split(",")]
    pipes = [int(p) for p in (args.dali_pipelines or ("1,2" if cpu else "1,2,4")).split(",")]
    threads = args.dali_threads or (2 if cpu else 4)
    # The DataLoader side of DALI probes files, samples indices and cuts videos (trim.py: 1-2 ms a sample).
    dali_workers = min(2, max(workers))
    for k in workers:
        yield (
            f"pyav h264 gop{args.gop} workers={k}",
            dict(backend="pyav", video_dir=sets["h264"], num_workers=k),
        )
    k = max(workers)
    yield f"pyav h264 gop4 workers={k}", dict(backend="pyav", video_dir=sets["h264_gop4"], num_workers=k)
    for k in workers:
        yield (
            f"frame_store cpu-jpeg workers={k}",
            dict(backend="frame_store", frame_store=store, num_workers=k),
        )
    affines = _switch_values(args.dali_affine, "--dali-affine")
    cuts = _cut_variants(args)
    codec = "vp9" if cpu else "h264"
    dali = f"dali-{'cpu' if cpu else 'gpu'} {codec}"

    def video(folder: str, p: int, cut: tuple[bool, int], **extra) -> dict:
        return (
            dict(
                backend="dali",
                video_dir=sets[folder],
                num_workers=dali_workers,
                dali_pipelines=p,
                dali_trim=cut[0],
                dali_pack=cut[1],
            )
            | extra
        )

    for k, cut, affine in itertools.product(
        [int(x) for x in (args.dali_processes or "").split(",") if x], cuts, affines
    ):
        yield (
            f"{dali} processes={k} trim={_on(cut[0])} affine={_on(affine)}" + _pack_suffix(cut[1]),
            # the workers cut the videos; without cutting they would only sample indices
            video(codec, 1, cut, num_workers=dali_workers if cut[0] else 0, dali_affine=affine, processes=k),
        )

    if cpu:
        for p, cut in itertools.product(pipes, cuts):
            yield f"{dali} pipelines={p} {_cut_name(*cut)}", video("vp9", p, cut, dali_threads=threads)
    else:
        for p, order, cut, affine in itertools.product(pipes, ("none", "frames"), cuts, affines):
            yield (
                f"{dali} gop{args.gop} pipelines={p} order={order} trim={_on(cut[0])} threads={threads} "
                f"affine={_on(affine)}" + _pack_suffix(cut[1]),
                video("h264", p, cut, dali_order=order, dali_threads=threads, dali_affine=affine),
            )
        for p in pipes:
            yield (
                f"{dali} gop{args.gop} pipelines={p} no-index trim=off",
                video("h264", p, (False, 1), dali_build_index=False),
            )
        for p, cut in itertools.product(pipes, cuts):
            yield f"{dali} gop4 pipelines={p} {_cut_name(*cut)}", video("h264_gop4", p, cut)
    for p in pipes:
        yield (
            f"dali-{'cpu' if cpu else 'gpu'} frame_store pipelines={p}",
            dict(
                backend="frame_store",
                frame_store=store,
                frame_store_reader="dali",
                num_workers=max(workers),
                dali_pipelines=p,
                dali_threads=threads,
            ),
        )


def measure(args, root: Path, overrides: dict) -> dict:
    if "processes" in overrides:
        overrides = dict(overrides)
        return measure_processes(args, root, overrides, overrides.pop("processes"))
    return measure_shard(args, root, overrides)


def _shard_worker(args, root, overrides, rank, world, barrier, results) -> None:
    try:
        results.put((rank, measure_shard(args, root, overrides, rank, world, barrier)))
    except Exception as err:  # the parent reports it as the variant's error
        barrier.abort()
        results.put((rank, {"error": f"{type(err).__name__}: {err}"}))


def measure_processes(args, root: Path, overrides: dict, processes: int) -> dict:
    """`processes` independent loaders, each in its own (spawned) process with its own CUDA context and DALI
    pipelines, each on a shard of the samples, timed together from a barrier: frames of all / the slowest
    one's time. Why: DALI's raw-video path on the H100 stayed at about 24 ms per sample whatever the number
    of pipelines in one process (docs/PERFORMANCE.md); do processes scale?"""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(target=_shard_worker, args=(args, root, overrides, r, processes, barrier, results))
        for r in range(processes)
    ]
    for proc in procs:
        proc.start()
    rows = dict(results.get(timeout=600) for _ in procs)
    for proc in procs:
        proc.join()
    errors = [r["error"] for r in rows.values() if "error" in r]
    if errors:
        raise RuntimeError(f"{len(errors)} of {processes} processes failed: {errors[0]}")
    frames = sum(r["frames"] for r in rows.values())
    seconds = max(r["seconds"] for r in rows.values())
    return {"frames_per_s": frames / seconds, "frames": frames, "seconds": seconds, "processes": processes}


def measure_shard(args, root: Path, overrides: dict, rank: int = 0, world: int = 1, barrier=None) -> dict:
    cfg = DataConfig(
        ann_dir=str(root / "annotations"),
        image_size=args.size,
        num_test_clips=CLIPS,
        frames_per_clip=FRAMES,
        test_sampling="rand",
        frame_cache_size=0,  # every sample is decoded: no help from repeated videos
        **{k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()},
    )
    data = build_dataset("msrvtt_ret", "val", cfg, build_tokenizer(), IMAGENET_RGB)
    loader = build_loader(
        data.videos, cfg, args.batch_size, False, rank=rank, world_size=world, device=args.device
    )

    def batches():
        for epoch in itertools.count():
            loader.sampler.set_epoch(epoch)
            yield from loader

    stream = batches()
    # Warm-up drains every batch the workers could have prefetched while starting (workers x prefetch_factor):
    # timing only 2 warm-up batches let 16 workers fill their queues first, so the timed batches were
    # already decoded and PyAV "delivered" 40,000 frames/s on the H100 machine (2026-11-26, second run).
    workers = cfg.num_workers
    for _ in range(max(2, workers * cfg.prefetch_factor + 1)):
        frames = next(stream)["frames"].to(args.device)
    if args.device == "cuda":
        torch.cuda.synchronize()
    if barrier is not None:  # every process starts its clock together
        barrier.wait()
    start, delivered = time.perf_counter(), 0
    for _ in range(max(args.batches, 2 * workers)):  # each worker delivers a batch at least twice
        frames = next(stream)["frames"].to(args.device, non_blocking=True)  # [B, N, T, 3, L, L]
        delivered += frames.shape[0] * frames.shape[1] * frames.shape[2]
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"frames_per_s": delivered / seconds, "frames": delivered, "seconds": seconds}


def default_out(device: str) -> Path:
    """benchmarks/results/data_<device>_<date>.json, or its first free `_run<N>` name (unused_default)."""
    return unused_default(
        REPO / "benchmarks" / "results" / f"data_{device}_{dt.date.today().isoformat()}.json"
    )


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    out = Path(args.out) if args.out else default_out(args.device)
    report = {
        "benchmark": "data",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"device": args.device, "cpus": os.cpu_count(), "platform": platform.platform()},
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "setup": {k: v for k, v in vars(args).items() if k not in ("out", "only")}
        | {"clips": CLIPS, "frames": FRAMES},
        "results": [],
    }
    only = [o for o in args.only.split(",") if o]
    _check_only(args, only)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        sets = make_videos(args, root)
        store = root / "frames.h5"
        workers = 0 if _encodes_in_process(args) else max(1, min(usable_cpus(), 16))
        build_frame_store(sets["h264"], store, fps=args.store_fps, workers=workers, progress=False)
        print(f"prepared {len(list(sets['h264'].iterdir()))} video ids in {time.perf_counter() - t0:.1f} s")
        for name, overrides in variants(args, sets, store):
            if only and not any(name.startswith(o) for o in only):
                continue
            row = {"variant": name, **{k: v for k, v in overrides.items() if not isinstance(v, Path)}}
            try:
                row.update(measure(args, root, overrides))
            except Exception as err:  # one failing backend must not hide the others
                row["error"] = f"{type(err).__name__}: {err}"
                traceback.print_exc()
            report["results"].append(row)
            fps = f"{row['frames_per_s']:10.1f}" if "frames_per_s" in row else "     error"
            print(f"{name:<48} {fps} frames/s", flush=True)
            write_report(report, out)  # after every row: a step stopped by its time limit keeps its rows
    print_table(report)
    write_report(report, out)
    print(f"wrote {out}")
    failed = [r for r in report["results"] if "error" in r]
    # every variant failing (no DALI in the workers, a broken decoder) is the step's failure, not "OK"
    return 1 if failed and len(failed) == len(report["results"]) else 0


def _check_only(args, only: list[str]) -> None:
    """Exits naming the --only prefixes no variant starts with, before the minutes of preparing videos: a
    misspelt prefix (run_all.sh's DATA_ONLY) prepared everything, measured nothing and exited 0."""
    names = [name for name, _ in variants(args, {k: Path(k) for k in ("h264", "vp9", "h264_gop4")}, None)]
    unmatched = [o for o in only if not any(name.startswith(o) for name in names)]
    if unmatched:
        listed = "\n  ".join(names)
        sys.exit(
            f"--only: no variant starts with {', '.join(map(repr, unmatched))}; on {args.device}:\n  {listed}"
        )


def write_report(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(out)  # atomic: a kill mid-write leaves the previous rows


def print_table(report):
    setup = report["setup"]
    print(
        f"\nframes/s at L={setup['size']}, {setup['clips']} clips x {setup['frames']} frames per sample, "
        f"batch {setup['batch_size']}, {report['machine']['cpus']} CPUs, device {report['gpu'] or 'cpu'}"
    )
    print(f"| {'variant':<48} | {'frames/s':>10} |\n|{'-' * 50}|{'-' * 12}|")
    for row in report["results"]:
        value = f"{row['frames_per_s']:10.1f}" if "frames_per_s" in row else f"{'error':>10}"
        why = f" {row['error'].splitlines()[0][:120]} |" if "error" in row else ""  # e.g. no DALI here
        print(f"| {row['variant']:<48} | {value} |{why}")


if __name__ == "__main__":
    sys.exit(main())
