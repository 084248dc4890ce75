"""Figure 5 of the ClipBERT paper, for the eager and the optimized training path in one run.

  (a) largest batch vs Ntrain in {1,2,4,8,16}, T=1      (b) fwd+bwd time vs Ntrain, T=1, batch 8
  (c) largest batch vs T in {1,2,4,8,16}, Ntrain=1      (d) fwd+bwd time vs T, Ntrain=1, batch 8

Base preset: MSRA ResNet-50 (FrozenBN, stem+res2 frozen) + BERT-base, L=448, text length 32, one text per
video (ITM head, LSE clip aggregation + NLL). The largest batch is found by probing real training steps
(forward, backward, AdamW) under --mem-cap-gib, enforced on CUDA by the allocator's per-process memory
fraction; on the CPU by a byte budget against the live-tensor peak (see clipbert/perf/memory.py).

  python benchmarks/memory_vs_ntrain.py --device cuda --time-budget-s 300        # the GPU run
  python benchmarks/memory_vs_ntrain.py --device cpu --small                     # tiny preset, minutes

Writes <out-dir>/<tag>.{json,csv,md,png} (tag: fig5_<device>[_small], then _run2, ... beside an earlier one)
and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import json
import math
import os
import platform
import signal
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fig5_plot import plot_figure5  # noqa: E402
from fig5_summary import TARGET_MAX_BATCH, write_summary  # noqa: E402
from result_paths import unused_default  # noqa: E402

from clipbert.models import ClipBertConfig  # noqa: E402
from clipbert.perf import apply_memory_cap, device_peak  # noqa: E402
from clipbert.perf.measure import Point, measure_max_batch, measure_time  # noqa: E402
from clipbert.perf.memory import collect_only_new_objects, release_memory  # noqa: E402
from clipbert.perf.paths import (  # noqa: E402
    EAGER,
    OPTIMIZED_MEMORY,
    OPTIMIZED_SPEED,
    PathOptions,
    ablation_ladder,
    build_train_step,
)

GIB = 2**30
SMALL_CAP_GIB = 0.0625  # --small: about twice the tiny model's weights, grads and AdamW state
SMALL_VOCAB = 2048  # --small: a short vocabulary keeps the embedding from dominating the tiny model
CSV_KEYS = [
    "panel", "path", "n_train", "frames_per_clip", "batch", "max_batch_exact", "first_failure",
    "max_batch_limit_reached", "median_ms", "p10_ms", "p90_ms", "frames_per_s", "peak_gib",
    "bytes_per_sample_gib", "model_tflop_per_step", "mfu", "flops_source", "error",
]  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--small", action="store_true", help="tiny preset, L=64, 2k vocabulary, small cap: a CPU smoke run"
    )
    p.add_argument("--preset", default="base")
    p.add_argument("--image-size", type=int, default=None, help="L (default: the preset's; 64 with --small)")
    p.add_argument("--panels", default="abcd", help="subset of 'abcd'")
    p.add_argument("--paths", nargs="+", default=["eager", "optimized"], choices=["eager", "optimized"])
    p.add_argument("--ntrain", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--frames", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--time-batch", type=int, default=8)
    p.add_argument(
        "--mem-cap-gib", type=float, default=None, help="default 32 (the paper's V100); 0.0625 with --small"
    )
    p.add_argument("--max-batch-limit", type=int, default=2048)
    p.add_argument("--max-probes", type=int, default=14)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--time-budget-s", type=float, default=None, help="whole run; searches stop early past it")
    p.add_argument("--no-compile", action="store_true", help="optimized path without torch.compile")
    p.add_argument("--compile-mode", default=None)
    p.add_argument(
        "--cnn-chunk-frames", type=int, default=32, help="frames per CNN micro-batch (memory path)"
    )
    p.add_argument("--ablation", action="store_true", help="also time each optimization step at Ntrain=16")
    p.add_argument(
        "--ablation-steps",
        nargs="+",
        default=None,
        metavar="NAME",
        help="only these ablation steps (e.g. eager +compile_full +cudnn_benchmark +cuda_graphs); eager is "
        "always timed too, so every ratio is against the eager path of the same run",
    )
    p.add_argument(
        "--profile", action="store_true", help="also write the CNN/transformer/data/optimizer profile"
    )
    p.add_argument(
        "--profile-step",
        default=None,
        metavar="NAME",
        help="profile this ablation step's path (e.g. +compile_full) instead of the optimized one",
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="override the bf16 peak used for MFU")
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument(
        "--tag",
        default=None,
        help="file name stem (default fig5_<device>[_small], or _run2, ... after it: never over a result)",
    )
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared, busy host)")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="measure nothing: join the rows of runs made in separate calls (each a <tag>.json, or the "
        "<tag>.partial.json of a run that was stopped) and write <tag>.{json,csv,md,png} from them",
    )
    args = p.parse_args(argv)
    if args.small:
        args.preset = "tiny"
        args.image_size = args.image_size or 64
        if args.mem_cap_gib is None:
            args.mem_cap_gib = SMALL_CAP_GIB
    args.mem_cap_gib = 32.0 if args.mem_cap_gib is None else args.mem_cap_gib
    if set(args.panels) - set("abcd"):
        p.error(f"--panels takes letters from 'abcd', got {args.panels!r}")
    _check_numbers(p, args)
    try:  # now, not after the run: the rows of a finished run were lost to a traceback
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        p.error(f"argument --out-dir: cannot create folder {args.out_dir}: {err}")
    return args


def _check_numbers(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors for values no run can use: --device tpu was a RuntimeError traceback, --steps -1 timed
    every row as an error and --ntrain 0 probed an empty batch, each only after minutes of setup."""
    try:
        torch.device(args.device)
    except RuntimeError:
        p.error(f"argument --device: not a torch device: {args.device!r}")
    at_least = {
        "--time-batch": (args.time_batch, 1),
        "--steps": (args.steps, 1),
        "--warmup": (args.warmup, 0),
    }
    at_least |= {"--max-batch-limit": (args.max_batch_limit, 1), "--max-probes": (args.max_probes, 1)}
    at_least |= {"--cnn-chunk-frames": (args.cnn_chunk_frames, 1), "--threads": (args.threads, 1)}
    at_least |= {"--ntrain": (min(args.ntrain), 1), "--frames": (min(args.frames), 1)}
    for flag, (value, low) in at_least.items():
        if value is not None and value < low:
            p.error(f"argument {flag}: must be at least {low}, got {value}")
    positive = [("--mem-cap-gib", args.mem_cap_gib), ("--time-budget-s", args.time_budget_s)]
    positive.append(("--peak-tflops", args.peak_tflops))  # nan made every MFU nan (NaN in the JSON)
    for flag, value in positive:
        if value is not None and not (0 < value < math.inf):  # also nan, which compares false
            p.error(f"argument {flag}: must be a positive number, got {value}")


def bench_config(args) -> ClipBertConfig:
    """Both paths' model: the original backbone's frozen setup (FrozenBN, stem+res2 frozen, MSRA style)."""
    overrides = dict(
        backbone_style="msra", frozen_bn=True, freeze_at=2, pretrain_heads=False, max_text_len=32
    )
    if args.image_size:
        overrides["image_size"] = args.image_size
    if args.small:
        overrides["vocab_size"] = SMALL_VOCAB
    return ClipBertConfig.from_preset(args.preset, **overrides)


def path_options(args) -> tuple[dict[str, PathOptions], dict[str, PathOptions]]:
    """(options for the time panels, options for the memory panels) per path name."""
    speed = OPTIMIZED_SPEED
    if args.no_compile:
        speed = dataclasses.replace(speed, compile="none")
    elif args.compile_mode:
        speed = dataclasses.replace(speed, compile_mode=args.compile_mode)
    memory = dataclasses.replace(OPTIMIZED_MEMORY, cnn_chunk_frames=args.cnn_chunk_frames)
    timed = {"eager": EAGER, "optimized": speed}
    sized = {"eager": EAGER, "optimized": memory}
    return {k: timed[k] for k in args.paths}, {k: sized[k] for k in args.paths}


class Budget:
    """Splits --time-budget-s between phases; time a phase leaves unused passes to the next."""

    def __init__(self, total: float | None):
        self.start = time.monotonic()
        self.total = total

    def deadline(self, share_of_rest: float) -> float | None:
        if self.total is None:
            return None
        rest = self.total - (time.monotonic() - self.start)
        return time.monotonic() + max(0.0, rest) * share_of_rest

    def left(self) -> float | None:
        return None if self.total is None else self.total - (time.monotonic() - self.start)


def write_atomic(path: Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file in the same folder: a run killed mid-write (the GPU
    step's `timeout` sends SIGTERM, then SIGKILL) leaves the previous file whole, not a truncated JSON that
    would lose every point measured before it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _log(point: Point) -> None:
    value = f"max batch {point.batch}" if point.panel in "ac" else f"{point.median_ms or float('nan'):.1f} ms"
    extra = f" error: {point.error}" if point.error else ""
    print(
        f"  ({point.panel}) {point.path:<24} Ntrain={point.n_train:<3} T={point.frames_per_clip:<3} {value}"
        f"{'' if point.peak_gib is None else f', peak {point.peak_gib:.2f} GiB'}{extra}",
        flush=True,
    )


class Recorder:
    """Collects the points and rewrites <tag>.partial.json after each one: a run killed by its caller's
    timeout (the GPU call has a hard limit) keeps every point measured so far (`--merge` reads it back)."""

    def __init__(self, args, rows: list[Point], header: dict):
        self.rows = rows
        self.path = Path(args.out_dir) / f"{args.tag}.partial.json"
        # the complete result's header (device, config, date ...): a partial file can head a --merge
        self.meta = header
        self.start = time.monotonic()
        if self.path.is_file():  # an interrupted run's points: this run would overwrite, then delete them
            kept = self.path.with_name(f"{args.tag}.partial.{time.strftime('%Y%m%d-%H%M%S')}.json")
            self.path.rename(kept)
            print(f"  an earlier run's unfinished points kept as {kept}", flush=True)
            print("  (--merge joins them with other runs' JSON)", flush=True)

    def __call__(self, point: Point) -> None:
        with _stop_signals_deferred():  # a SIGTERM here stopped the run with the point measured, not saved
            self.rows.append(point)
            _log(point)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = {**self.meta, "complete": False, "wall_s": time.monotonic() - self.start}
            partial["rows"] = [r.to_dict() for r in self.rows]
            write_atomic(self.path, json.dumps(partial, indent=1) + "\n")


_DEFERRED: dict = {"depth": 0, "pending": None}  # a stop signal that came while a point was being saved


@contextlib.contextmanager
def _stop_signals_deferred():
    """SIGTERM and Ctrl-C (under `_stop_signals`) wait until the block ends, then stop the run as usual.
    (Masking the signal would not do: it only masks this thread, and torch's threads would take it.)"""
    _DEFERRED["depth"] += 1
    try:
        yield
    finally:
        _DEFERRED["depth"] -= 1
    if not _DEFERRED["depth"] and _DEFERRED["pending"] is not None:
        stop, _DEFERRED["pending"] = _DEFERRED["pending"], None
        raise stop


def _build(cfg, options: PathOptions, device, rows: list[Point], optimizer: bool = True):
    """The path's TrainStep, or None after recording why it could not be built."""
    try:
        return build_train_step(cfg, options, device, optimizer=optimizer)
    except Exception as exc:  # e.g. out of memory for the weights: the other paths still run
        rows.append(
            Point(
                "build",
                options.name,
                0,
                0,
                0,
                options=options.to_dict(),
                error=f"{type(exc).__name__}: {exc}",
            )
        )
        print(f"  building {options.name} failed: {exc}", flush=True)
        return None


def _ladder_step(args, name: str, flag: str = "--profile-step") -> PathOptions:
    """The ablation step called `name`; exits naming the flag and the known steps if there is none."""
    ladder = ablation_ladder(compile_cnn=not args.no_compile)
    for options in ladder:
        if options.name == name:
            return options
    raise SystemExit(f"{flag}: unknown {[name]}; the steps are {[o.name for o in ladder]}")


def check_host_cap(device: torch.device, cap: int) -> None:
    """On a CPU the cap is checked after each probe's step (host memory has no allocator limit), and a
    probe that does not fit has allocated up to about 4x the cap by then (3.6x measured, --small): a cap
    over a quarter of the host's memory could exhaust it, so it is refused."""
    if device.type != "cpu":
        return
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if cap > host / 4:
        raise SystemExit(
            f"--mem-cap-gib {cap / GIB:g} on a CPU: a batch-size probe can allocate about 4x the cap before "
            f"the cap is checked, and this host has {host / GIB:.0f} GiB; give at most {host / 4 / GIB:.1f} "
            "(--small sets a small one)"
        )


def run(args) -> dict:
    if args.profile_step:  # a misspelt step must not cost the whole run first
        _ladder_step(args, args.profile_step)
    for name in args.ablation_steps or ():  # nor one of the ablation's (it runs after every panel)
        _ladder_step(args, name, flag="--ablation-steps")
    device = torch.device(args.device)
    cfg = bench_config(args)
    cap = int(args.mem_cap_gib * GIB)
    check_host_cap(device, cap)
    fraction = apply_memory_cap(cap, device)
    peak = device_peak(device, args.peak_tflops)
    timed, sized = path_options(args)
    budget = Budget(args.time_budget_s)
    rows: list[Point] = []
    header = _header(args, device, cfg, peak, fraction, timed, sized)
    record = Recorder(args, rows, header)
    time_points = [("b", n, 1) for n in args.ntrain if "b" in args.panels]
    time_points += [("d", 1, t) for t in args.frames if "d" in args.panels]
    size_points = [("a", n, 1) for n in args.ntrain if "a" in args.panels]
    size_points += [("c", 1, t) for t in args.frames if "c" in args.panels]

    # One model per path serves all its points (one torch.compile); the time panels go first, since they
    # carry the speed target and cost a small, fixed time; the searches share what the budget has left.
    searches_left = len(size_points) * len(sized)
    for name in timed if time_points or size_points else ():
        # The time panels' path, then the memory panels' when it differs; a path that fails to build loses
        # only its own panels (a failing speed path used to skip the memory path's searches too).
        step = _build(cfg, timed[name], device, rows) if time_points else None
        if step is not None:
            for i, (panel, n, t) in enumerate(time_points):
                left = budget.left()
                per_point = None if left is None else max(2.0, 0.2 * left / max(1, len(time_points) - i))
                record(
                    measure_time(
                        step,
                        cfg,
                        peak,
                        panel=panel,
                        n_clips=n,
                        frames=t,
                        batch=args.time_batch,
                        warmup=args.warmup,
                        steps=args.steps,
                        max_seconds=per_point,
                    )
                )
        if size_points and (step is None or sized[name] != timed[name]):
            if step is None and time_points and sized[name] == timed[name]:
                continue  # these very options just failed to build: their "build" row says why
            del step
            release_memory(device)
            step = _build(cfg, sized[name], device, rows)
            if step is None:
                continue
        for panel, n, t in size_points:
            deadline = budget.deadline((0.85 if args.ablation or args.profile else 1.0) / searches_left)
            searches_left -= 1
            record(
                measure_max_batch(
                    step,
                    cfg,
                    panel=panel,
                    n_clips=n,
                    frames=t,
                    cap_bytes=cap,
                    limit=args.max_batch_limit,
                    deadline=deadline,
                    max_probes=args.max_probes,
                    # Probe issue 7's targets first (base preset only): a search cut by the budget must
                    # still settle them; the third session's jumped from 37 straight to 302.
                    must_try=(TARGET_MAX_BATCH[n],)
                    if panel == "a" and t == 1 and not args.small and n in TARGET_MAX_BATCH
                    else (),
                )
            )
        del step
        release_memory(device)
    if args.ablation:
        ladder = ablation_ladder(compile_cnn=not args.no_compile)
        if args.ablation_steps:
            for name in args.ablation_steps:
                _ladder_step(args, name, flag="--ablation-steps")
            ladder = [o for o in ladder if o.name in {"eager", *args.ablation_steps}]
        eager_fps = None  # the ladder's first step, the baseline of every ratio
        for options in ladder:
            left = budget.left()
            if left is not None and left < 20:
                print(f"  ablation step {options.name} skipped: time budget spent", flush=True)
                continue
            step = _build(cfg, options, device, rows, optimizer=False)
            if step is None:
                continue
            point = measure_time(
                step,
                cfg,
                peak,
                panel="ablation",
                n_clips=max(args.ntrain),
                frames=1,
                batch=args.time_batch,
                warmup=args.warmup,
                steps=args.steps,
            )
            if options.name == "eager":
                eager_fps = point.frames_per_s
            point.eager_frames_per_s = eager_fps
            record(point)
            del step
            release_memory(device)
    profile = None
    if args.profile:
        from clipbert.perf.profile import profile_breakdown

        options = timed.get("optimized", EAGER)
        if args.profile_step:
            options = _ladder_step(args, args.profile_step)
        try:
            profile = profile_breakdown(
                cfg,
                options,
                device,
                n_clips=max(args.ntrain),
                batch=args.time_batch,
                out_dir=args.out_dir,
                tag=args.tag,
            )
        except Exception as exc:  # the timed rows are already measured: keep them and say why
            print(f"  profile of {options.name} failed: {type(exc).__name__}: {exc}", flush=True)
            profile = {"options": options.to_dict(), "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            release_memory(device)
    return {
        **header,
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "wall_s": time.monotonic() - budget.start,
        "rows": [r.to_dict() for r in rows],
        "profile": profile,
    }


def _header(args, device, cfg, peak, fraction, timed, sized) -> dict:
    """What the result says of its run besides the rows: written first into <tag>.partial.json, so a run
    stopped by its caller's limit can head a --merge like a complete one (MERGE_SAME is checked on it)."""
    return {
        "benchmark": "ClipBERT Figure 5: memory and time vs Ntrain and T",
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": peak.name,
        "peak_bf16_tflops": None if peak.bf16_flops is None else peak.bf16_flops / 1e12,
        "peak_source": peak.source,
        "mem_cap_gib": args.mem_cap_gib,
        "memory_fraction": fraction,
        "memory_accounting": "torch.cuda allocator (per-process fraction)"
        if device.type == "cuda"
        else "live-tensor bytes counted by a TorchDispatchMode, checked against the cap after each step",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host_cpus": os.cpu_count(),
        "config": cfg.to_dict(),
        "paths": {
            "time_panels": {k: v.to_dict() for k, v in timed.items()},
            "memory_panels": {k: v.to_dict() for k, v in sized.items()},
        },
        "time_batch": args.time_batch,
        "texts_per_video": 1,
        "argv": sys.argv[1:],
    }


MERGE_SAME = ("device", "config", "mem_cap_gib", "time_batch")  # keys every merged file must share
ROW_KEYS = ("panel", "path", "n_train", "frames_per_clip", "batch")  # what the tables and the plot read


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_rows(path: str, result) -> None:
    """Exits naming the file, row and key when `result` is not a Figure-5 result with rows: another
    benchmark's JSON (ops_*.json, data_*.json) or a hand-edited file was a KeyError or AttributeError
    traceback naming neither, or (with no "rows") was joined as if it had none."""
    if not isinstance(result, dict) or not isinstance(result.get("rows"), list):
        what = f"a JSON {type(result).__name__}" if not isinstance(result, dict) else "no list of 'rows'"
        raise SystemExit(f"--merge: {path} is not a Figure-5 result ({what})")
    for i, row in enumerate(result["rows"]):
        missing = [k for k in ROW_KEYS if k not in row] if isinstance(row, dict) else list(ROW_KEYS)
        if missing:
            raise SystemExit(f"--merge: {path}: row {i} has no {', '.join(map(repr, missing))}")


def merge_results(paths: list[str]) -> dict:
    """One result from several runs' JSON files: the first gives the setup, every file gives its rows, and
    the first profile found is kept. Points measured twice keep the later file's row, unless only the
    earlier one has no error."""
    results = []
    for path in paths:
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(f"--merge: cannot read {path}: {err}") from err
    for path, result in zip(paths, results):
        _check_rows(path, result)
    first = results[0]
    missing = [k for k in ("config", "device", "date_utc") if k not in first]
    if missing:  # e.g. a partial file written before partial files carried the header
        raise SystemExit(f"--merge: {paths[0]} has no run header (no {', '.join(missing)}); put it later")
    # Rows of another machine, model or batch would sit beside these under one header, and an ablation
    # step's ratio would be taken against another run's eager row: refused, naming the file and key.
    for path, result in zip(paths[1:], results[1:]):
        for key in MERGE_SAME:
            if key in result and result[key] != first.get(key):
                raise SystemExit(
                    f"--merge: {path} differs from {paths[0]} in {key!r} "
                    f"({_short(result[key])} vs {_short(first.get(key))}); merge runs of one setup only"
                )
    rows: dict[tuple, dict] = {}
    for path, result in zip(paths, results):
        for row in result["rows"]:
            key = (row["panel"], row["path"], row["n_train"], row["frames_per_clip"])
            kept = rows.get(key)
            if row.get("error") and kept is not None and not kept.get("error"):
                # a rerun that failed (e.g. out of memory beside another process) does not erase the point
                # an earlier run measured; its error stays on record in that row's notes
                notes = list(kept.get("notes") or [])
                kept["notes"] = notes + [f"{Path(path).name} failed here: {row['error']}"]
                continue
            rows[key] = row
    if not rows:
        raise SystemExit(f"--merge: no measured rows in {', '.join(paths)}")
    profile = next((r["profile"] for r in results if r.get("profile")), None)
    merged = {**first, "rows": list(rows.values()), "profile": profile}
    for key in ("complete", "stopped"):  # a stopped run may head the list; the join is the finished result
        merged.pop(key, None)
    merged["wall_s_runs"] = [r.get("wall_s") for r in results]
    merged["wall_s"] = sum(w or 0.0 for w in merged["wall_s_runs"])
    merged["merged_from"] = [{"file": Path(p).name, "argv": r.get("argv")} for p, r in zip(paths, results)]
    return merged


def _adopt_profile_table(result: dict, args) -> None:
    """Copy the profile's torch.profiler table (found beside the merged JSONs) to <tag>_profile.md."""
    prof = result.get("profile") or {}
    if not prof.get("table_file"):
        return
    name = Path(prof["table_file"]).name
    for source in (Path(p).parent / name for p in args.merge):
        if source.is_file():
            target = Path(args.out_dir) / f"{args.tag}_profile.md"
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.resolve() != target.resolve():
                target.write_text(source.read_text())
            prof["table_file"] = str(target)
            return


def write_outputs(result: dict, args) -> dict[str, str]:
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = args.tag or f"fig5_{torch.device(args.device).type}{'_small' if args.small else ''}"
    files = {ext: str(out_dir / f"{tag}.{ext}") for ext in ("json", "csv", "md", "png")}
    write_atomic(Path(files["json"]), json.dumps(result, indent=1) + "\n")
    with open(files["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_KEYS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result["rows"])
    write_summary(result, files["md"])
    if args.no_plot:
        del files["png"]
    else:
        date, size = result["date_utc"][:10], result["config"].get("image_size", "?")
        title = f"ClipBERT Figure 5 on {result['device']} ({date}), L={size}"
        plot_figure5(result["rows"], title, files["png"], args.mem_cap_gib)
    return files


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the run is: a KeyboardInterrupt, so that no `except Exception` of a point
    records it as that point's error and carries on."""


@contextlib.contextmanager
def _stop_signals():
    """SIGTERM raises Terminated and SIGINT KeyboardInterrupt where the run is, or once the point being
    saved is saved (`_stop_signals_deferred`)."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers: main thread only
        yield
        return

    def stop(signum, frame):
        exc = Terminated(f"signal {signal.Signals(signum).name}") if signum == signal.SIGTERM else None
        exc = exc or KeyboardInterrupt()
        if _DEFERRED["depth"]:
            _DEFERRED["pending"] = exc
            return
        raise exc

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _DEFERRED["pending"] = None


def _write_stopped_outputs(args, stop: KeyboardInterrupt) -> None:
    """<tag>.partial.{csv,md,png} beside <tag>.partial.json, from the points measured before the stop: the
    table and figure of a run its caller's timeout stopped used to need a --merge by hand."""
    partial = Path(args.out_dir) / f"{args.tag}.partial.json"
    if not partial.is_file():
        print("  stopped before any point was measured", flush=True)
        return
    try:
        result = json.loads(partial.read_text())
        result["stopped"] = f"{type(stop).__name__}: {stop}" if str(stop) else type(stop).__name__
        files = write_outputs(result, argparse.Namespace(**{**vars(args), "tag": f"{args.tag}.partial"}))
    except Exception as err:  # the partial JSON is what matters; its table is a convenience
        print(f"  stopped; the table of the points so far failed: {type(err).__name__}: {err}", flush=True)
        return
    print(f"  stopped ({result['stopped']}): wrote {', '.join(files.values())}", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tag is None:
        args.tag = f"fig5_{torch.device(args.device).type}{'_small' if args.small else ''}"
        args.tag = unused_default(Path(args.out_dir) / f"{args.tag}.json").stem
    if args.merge:
        result = merge_results(args.merge)
        args.mem_cap_gib = result.get("mem_cap_gib", args.mem_cap_gib)
        _adopt_profile_table(result, args)
        files = write_outputs(result, args)
        print(Path(files["md"]).read_text())
        print("wrote " + ", ".join(files.values()))
        return 0
    try:
        with _stop_signals(), collect_only_new_objects():
            result = run(args)
    except KeyboardInterrupt as stop:  # Ctrl-C, or the caller's timeout (SIGTERM, then SIGKILL 10 s later)
        _write_stopped_outputs(args, stop)
        if isinstance(stop, Terminated):
            return 128 + signal.SIGTERM
        raise
    files = write_outputs(result, args)
    for ext in ("json", "csv", "md", "png"):  # the complete files replace a stopped run's
        Path(args.out_dir, f"{args.tag}.partial.{ext}").unlink(missing_ok=True)
    print(Path(files["md"]).read_text())
    print("wrote " + ", ".join(files.values()))
    errors = [r for r in result["rows"] if r["error"]]
    return 1 if errors and len(errors) == len(result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
