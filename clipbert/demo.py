"""`make demo`: generate the synthetic benchmark, train on the CPU in two stages, evaluate, print a table.

    python -m clipbert.demo --data data/synthetic --out outputs/demo [--set section.key=value ...]

Stage 1 (ds_synthetic_words.json) trains only the CNN side, to predict each video's caption words from its
frames (the visual-word loss); stage 2 (ds_synthetic.json) starts from it and trains retrieval, keeping the
visual-word loss. Without pretrained weights the matching loss alone leaves the model at chance
(docs/TRAINING.md). The benchmark is the default preset with 3,000 videos (DEMO_NUM_VIDEOS; 2,925 for
training, val and test stay 25 and 50), generated once: a finished one of this generator version with the
same arguments is reused. `--set` applies to both stages. A rerun resumes each stage only if it was trained by
the same config from the same inputs (the benchmark, and for stage 2 the stage-1 model).

Exit status: 0 done, 2 a bad config, flag or missing file, 3 the training diverged, 4 a write failed (a full
disk: free space, then rerun), 130 stopped (Ctrl-C).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

WORDS_CONFIG, DEMO_CONFIG = "ds_synthetic_words.json", "ds_synthetic.json"
# 185 training videos (the default 260) are memorised, not learned from (docs/TRAINING.md); 2,925 are not.
DEMO_NUM_VIDEOS = 3000
INPUTS = "demo_inputs.json"  # in each stage's output dir: digests of what the stage was trained from


def ensure_benchmark(
    data_dir: Path, seed: int = 0, num_videos: int = DEMO_NUM_VIDEOS, size: str = "default"
) -> dict:
    """The synthetic benchmark in data_dir: reused when it is finished, of this generator version, with
    these arguments and its files there (synthetic.not_ready_reason); regenerated otherwise, saying why."""
    from clipbert.data.synthetic import generate, not_ready_reason

    reason = not_ready_reason(data_dir, num_videos, seed, "h264", size)
    if reason is None:
        print(f"[demo] reusing the synthetic benchmark in {data_dir}", flush=True)
        return json.loads((Path(data_dir) / "meta.json").read_text())
    print(f"[demo] generating the synthetic benchmark in {data_dir}: {reason}", flush=True)
    return generate(data_dir, num_videos, seed, "h264", size, progress=True)


def benchmark_digest(meta: dict) -> str:
    """meta.json names the generator version and arguments, which fix every file of the benchmark."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]


def model_digest(model_dir: Path) -> str:
    """Digest of an exported model dir, the same for the same weights: a stage 1 that only resumed its
    finished run, and so exported the same weights again, keeps its digest."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).iterdir() if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".safetensors":
            data = _canonical_safetensors(data)
        digest.update(path.name.encode() + b"\0" + data)
    return digest.hexdigest()[:16]


def _canonical_safetensors(data: bytes) -> bytes:
    """The file with its JSON header's keys sorted: safetensors writes the metadata keys in another order in
    each process, so the same weights gave other bytes (seen: {"format", "clipbert"} either way round)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return json.dumps(header, sort_keys=True).encode() + data[8 + size :]


def set_aside_if_changed(cfg, inputs: dict | None = None) -> None:
    """Resume only a run of the same config and inputs: an output dir written by another config (an older
    demo, other --set values) or from other `inputs` (a regenerated benchmark, a retrained stage 1) moves to
    <dir>.previous, so that neither its checkpoints load into a different model nor its results stand for
    the new inputs. `inputs` is then recorded in the dir."""
    out = Path(cfg.train.output_dir)
    reason = _why_stale(out, cfg, inputs)
    if reason:
        _refuse_if_running(out, reason)
        previous = out.with_name(out.name + ".previous")
        shutil.rmtree(previous, ignore_errors=True)
        out.rename(previous)
        print(f"[demo] {out} holds a run {reason}: moved to {previous}, starting over", flush=True)
    if inputs is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / INPUTS).write_text(json.dumps(inputs, indent=2, sort_keys=True) + "\n")


def _refuse_if_running(out: Path, reason: str) -> None:
    """A stale dir that a training run still holds (another `make demo`, with other --set values) stays. Why:
    moved away, that run went on writing by its paths into the new run's dir, and the two runs' logs and
    checkpoints mixed, which the output-dir lock of train.run exists to prevent."""
    from clipbert.train import config as C
    from clipbert.train.output_lock import holder

    running = holder(out)
    if running:
        raise C.ConfigError(
            f"{out} holds a run {reason}, and that run is still going ({running}): wait for it to end, or "
            "give another --out"
        )


def _why_stale(out: Path, cfg, inputs: dict | None) -> str | None:
    saved = _read_json(out / "config.json")
    if saved is None:  # nothing trained there yet (or a config.json cut off before the first step)
        return None if not (out / "checkpoints").exists() else "of an unreadable config"
    old = {k: v for k, v in saved.items() if k != "resolved_model"}
    if old != json.loads(json.dumps(cfg.to_dict(), default=str)):
        return "of another config"
    recorded = _read_json(out / INPUTS)
    if inputs is None or recorded == inputs:
        return None
    if recorded is None:
        return "from unrecorded inputs"
    changed = sorted(k for k in inputs.keys() | recorded.keys() if recorded.get(k) != inputs.get(k))
    return f"trained from other inputs ({', '.join(changed)} changed)"


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or cut off by a crash
        return None
    return value if isinstance(value, dict) else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    # Raw: the docstring's command line and paragraphs, not argparse's one reflowed block
    parser = argparse.ArgumentParser(
        prog="python -m clipbert.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data", default="data/synthetic", help="synthetic benchmark directory (default: data/synthetic)"
    )
    parser.add_argument("--out", default="outputs/demo", help="run output directory (default: outputs/demo)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value of both stages, as train.py's --set; repeatable",
    )
    args = parser.parse_args(argv)
    for flag in ("data", "out"):
        path = Path(getattr(args, flag))
        if path.exists() and not path.is_dir():
            parser.error(f"argument --{flag}: {path} is a file, not a directory")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from clipbert.train.engine import setup_environment

    setup_environment()
    from clipbert.train import config as C
    from clipbert.train.logging import is_write_failure
    from clipbert.train.loop import TrainingDiverged

    try:
        return _demo(args)
    except (C.ConfigError, FileNotFoundError) as err:  # a bad --set key or value, or a missing file
        print(f"[demo] error: {err}", file=sys.stderr, flush=True)
        return 2
    except TrainingDiverged as err:
        print(f"[demo] the training diverged: {err}", file=sys.stderr, flush=True)
        return 3
    except OSError as err:
        # a full disk: the message names the file; a rerun resumes (train.py's 4). Also a bare OSError, as
        # train.py: the benchmark's generation and the demo's own files write without WriteError
        if not is_write_failure(err):
            raise
        print(f"[demo] error: {err}. Free space, then rerun: it continues", file=sys.stderr, flush=True)
        return 4


def _demo(args: argparse.Namespace) -> int:
    import torch

    from clipbert.train import config as C
    from clipbert.train.engine import close_distributed, init_distributed
    from clipbert.train.run import STOPPED

    data_dir, out = Path(args.data), Path(args.out)
    stages = _stages(data_dir, out, args.set)
    # both validated before minutes of generation and training
    configs = [C.load(name, overrides) for name, overrides in stages]
    # An --out (or --data) under a file was a NotADirectoryError traceback, --out's only after the minutes
    # of generating the benchmark: both folders are made first, a failure reported as a usage error (exit 2).
    for flag, folder in (("--data", data_dir), ("--out", out)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise C.ConfigError(f"{flag} {folder}: cannot create the folder ({err})") from None
    meta = ensure_benchmark(data_dir)
    device = torch.device("cpu")
    init_distributed(device)
    start = time.time()
    try:
        summaries = _train(stages, configs, meta, out / "visual_words" / "model", device)
    finally:
        close_distributed()
    if summaries is None:
        return STOPPED
    result = _summary(summaries, [name for name, _ in stages], meta, time.time() - start)
    (out / "demo_summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print(_report(result, out), flush=True)
    return 0


def _stages(data_dir: Path, out: Path, sets: list[str]) -> list[tuple[str, list[str]]]:
    """(config name, overrides) of stage 1 and stage 2."""
    data = [f"data.ann_dir={data_dir / 'annotations'}", f"data.video_dir={data_dir / 'videos'}"]
    resume = "train.resume=auto"  # a second `make demo` finishes the earlier runs, or reports their results
    words_out, retrieval_out = out / "visual_words", out / "retrieval"
    init = f"train.init_checkpoint={words_out / 'model'}"
    return [
        (WORDS_CONFIG, [*data, f"train.output_dir={words_out}", resume, *sets]),
        (DEMO_CONFIG, [*data, f"train.output_dir={retrieval_out}", init, resume, *sets]),
    ]


def _train(stages, configs, meta: dict, words_model: Path, device) -> list[dict] | None:
    """Run the stages in order; each summary's `finished_before` says it reports a finished run's results.
    None if a stage stopped: stage 2 must not start from an unfinished stage 1."""
    from clipbert.train.run import run

    inputs = {"benchmark": benchmark_digest(meta)}
    summaries = []
    for (name, _), cfg in zip(stages, configs):
        if summaries:  # stage 2 starts from stage 1's model: a retrained stage 1 makes its run stale
            inputs = {**inputs, "stage1_model": model_digest(words_model)}
        set_aside_if_changed(cfg, inputs)
        print(f"[demo] training {name} -> {cfg.train.output_dir}", flush=True)
        summary = run(cfg, device)
        if summary.get("reason") != "done":  # Ctrl-C
            print(
                f"[demo] {name} stopped at step {summary.get('step')} ({summary.get('reason')}); its "
                "checkpoint is saved: run `make demo` again to continue",
                flush=True,
            )
            return None
        summaries.append(summary)
    return summaries


def _summary(summaries: list[dict], names: list[str], meta: dict, seconds: float) -> dict:
    """demo_summary.json: missing metrics stay None (never 0), times say what they measure."""
    metrics = summaries[-1].get("metrics") or {}
    r1, chance = metrics.get("t2v_r1"), _chance_r1(meta, metrics)
    return {
        "this_run_seconds": round(seconds, 1),
        "stages_trained_now": [n for n, s in zip(names, summaries) if not s.get("finished_before")],
        # wall time each stage's perf.json recorded: of this run, or of the earlier run whose results stand
        "recorded_stage_seconds": {n: _stage_seconds(s.get("perf") or {}) for n, s in zip(names, summaries)},
        "test_t2v_r1": r1,
        "chance_r1": chance,
        "r1_over_chance": None if r1 is None or not chance else r1 / chance,
        # the matching head alone, without the visual-word score (eval.word_score_weight)
        "test_t2v_r1_itm_only": metrics.get("itm_only_t2v_r1"),
        # the weights best on val (best_model/), scored on test when they are not the final ones
        "best_val_step": (summaries[-1].get("best") or {}).get("step"),
        "test_t2v_r1_best_val": ((summaries[-1].get("best") or {}).get("test") or {}).get("t2v_r1"),
        "steps": summaries[-1].get("step"),
        "frames_per_s": (summaries[-1].get("perf") or {}).get("frames_per_s"),
    }


def _stage_seconds(perf: dict) -> float | None:
    """The stage's training time over all its sessions (a stopped and resumed stage has several)."""
    return perf.get("total_wall_s", perf.get("wall_s"))


def _chance_r1(meta: dict, metrics: dict) -> float | None:
    """R@1 chance in %: meta.json's, else 1 / #test videos."""
    chance = ((meta.get("chance") or {}).get("msrvtt_ret") or {}).get("test")
    if chance:
        return 100.0 * chance
    videos = metrics.get("num_videos") or ((meta.get("counts") or {}).get("msrvtt_ret") or {}).get("test")
    return 100.0 / videos if videos else None


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else spec.format(value)


def _report(result: dict, out: Path) -> str:
    r1, chance, ratio = (_fmt(result[k], f) for k, f in _REPORTED)
    itm_only = result["test_t2v_r1_itm_only"]
    alone = "" if itm_only is None else f"; the matching head alone {itm_only:.1f}%"
    best = result.get("test_t2v_r1_best_val")
    at_best = (
        "" if best is None else f"; the weights best on val (step {result['best_val_step']}) {best:.1f}%"
    )
    return (
        f"[demo] {_time_part(result)}; test text-to-video R@1 {r1} "
        f"(chance {chance}, {ratio}{alone}{at_best}); outputs in {out}"
    )


_REPORTED = (("test_t2v_r1", "{:.1f}%"), ("chance_r1", "{:.1f}%"), ("r1_over_chance", "{:.1f}x"))


def _time_part(result: dict) -> str:
    """This run's time when it trained; a rerun that only reported finished runs says so, with the time
    their training recorded, instead of calling its seconds of loading the training time."""
    trained, seconds = result["stages_trained_now"], result["this_run_seconds"]
    if trained:
        return f"train + eval {seconds / 60:.1f} min ({', '.join(trained)} trained in this run)"
    recorded = [s for s in result["recorded_stage_seconds"].values() if s is not None]
    took = _fmt(sum(recorded) / 60 if recorded else None, "{:.1f} min")
    return f"both stages had finished before: recorded results (training {took}, this run {seconds:.0f} s)"


if __name__ == "__main__":
    sys.exit(main())
