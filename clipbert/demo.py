"""`make demo`: generate the synthetic benchmark, train ds_synthetic.json on the CPU, evaluate, print a table.

    python -m clipbert.demo --data data/synthetic --out outputs/demo [--set section.key=value ...]

The benchmark is generated once: an existing one with the same generator arguments is reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEMO_CONFIG = "ds_synthetic.json"


def ensure_benchmark(data_dir: Path, seed: int = 0) -> dict:
    """The default synthetic benchmark in data_dir; regenerated only when meta.json's arguments differ."""
    from clipbert.data.synthetic import DEFAULT_NUM_VIDEOS, generate

    wanted = {"num_videos": DEFAULT_NUM_VIDEOS["default"], "seed": seed, "codec": "h264", "size": "default"}
    meta_path = data_dir / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("args") == wanted:
            print(f"[demo] reusing the synthetic benchmark in {data_dir}", flush=True)
            return meta
        print(f"[demo] {meta_path} has args {meta.get('args')}, want {wanted}: regenerating", flush=True)
    print(f"[demo] generating the synthetic benchmark in {data_dir} ...", flush=True)
    return generate(data_dir, wanted["num_videos"], seed, wanted["codec"], wanted["size"], progress=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipbert.demo", description=__doc__)
    parser.add_argument("--data", default="data/synthetic", help="synthetic benchmark directory")
    parser.add_argument("--out", default="outputs/demo", help="run output directory")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)

    from clipbert.train.engine import setup_environment

    setup_environment()
    import torch

    from clipbert.train import config as C
    from clipbert.train.engine import init_distributed
    from clipbert.train.run import run

    data_dir, out = Path(args.data), Path(args.out)
    meta = ensure_benchmark(data_dir)
    overrides = [
        f"data.ann_dir={data_dir / 'annotations'}",
        f"data.video_dir={data_dir / 'videos'}",
        f"train.output_dir={out}",
        "train.resume=auto",  # a second `make demo` finishes (or just re-evaluates) the earlier run
        *args.set,
    ]
    cfg = C.load(DEMO_CONFIG, overrides)
    device = torch.device("cpu")
    init_distributed(device)
    start = time.time()
    try:
        summary = run(cfg, device)
    finally:
        torch.distributed.destroy_process_group()
    seconds = time.time() - start
    metrics = summary.get("metrics") or {}
    # meta.json gives the chance level of each task; 1 / #test videos for text-to-video R@1
    chance = 100.0 * meta.get("chance", {}).get("msrvtt_ret", {}).get("test", 0.0)
    chance = chance or 100.0 / max(1, metrics.get("num_videos") or meta["counts"]["msrvtt_ret"]["test"])
    result = {
        "train_and_eval_seconds": round(seconds, 1),
        "test_t2v_r1": metrics.get("t2v_r1"),
        "chance_r1": chance,
        "r1_over_chance": (metrics.get("t2v_r1") or 0.0) / chance,
        "steps": summary.get("step"),
        "frames_per_s": summary.get("perf", {}).get("frames_per_s"),
    }
    (out / "demo_summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"[demo] train + eval {seconds / 60:.1f} min; test text-to-video R@1 {result['test_t2v_r1']:.1f}% "
        f"(chance {chance:.1f}%, {result['r1_over_chance']:.1f}x); outputs in {out}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
