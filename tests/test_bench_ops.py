"""The kernel benchmark runs on the CPU, measures the autograd floor next to every fwd+bwd case, and checks
the issue's GPU targets from a report."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_bench_ops_cpu_smoke(tmp_path):
    import bench_ops

    out = tmp_path / "ops.json"
    bench_ops.main(["--device", "cpu", "--reps", "1", "--out", str(out)])  # rc says whether CPU targets held
    report = json.loads(out.read_text())
    impls = {(r["op"], tuple(r["shape"]), r["pass_"]): set() for r in report["results"]}
    for r in report["results"]:
        impls[(r["op"], tuple(r["shape"]), r["pass_"])].add(r["impl"])
        assert r["time_us"] > 0 and r["speedup"] > 0
        assert (r["gbps"] is None) == (r["impl"] == "floor")
    for (_op, _shape, kind), names in impls.items():
        assert {"eager", "cpu", "reference"} <= names
        assert ("floor" in names) == (kind == "fwd+bwd")
    assert report["targets"] and all("cpu/eager speedup" in t["target"] for t in report["targets"])


def test_gpu_speedup_target_reports_the_autograd_floor():
    import bench_ops

    def row(impl, time_us, speedup):
        shape = [128, 16, 2]
        return dict(
            op="lse_aggregate_nll", shape=shape, pass_="fwd+bwd", impl=impl, time_us=time_us, speedup=speedup
        )

    report = {
        "device": "cuda",
        "results": [row("eager", 397.1, 1.0), row("cuda", 162.4, 2.45), row("floor", 99.0, 4.0)],
    }
    (check,) = bench_ops.check_targets(report)
    assert check["met"] is False and check["value"] == 2.45 and check["max_speedup"] == 4.0
