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
    for (op, _shape, kind), names in impls.items():
        assert {"eager", "cpu", "reference"} <= names
        assert ("floor" in names) == (kind == "fwd+bwd")
        # The value-and-grad op is timed beside the NLL's autograd fwd+bwd, on every backend.
        is_nll_fwd_bwd = (op, kind) == ("lse_aggregate_nll", "fwd+bwd")
        assert ({"cpu_vg", "reference_vg"} <= names) == is_nll_fwd_bwd
    assert report["targets"] and all(t["impl"] in ("cpu", "cpu_vg") for t in report["targets"])
    assert {t["impl"] for t in report["targets"]} == {"cpu", "cpu_vg"}
    assert all(f"{t['impl']}/eager speedup" in t["target"] for t in report["targets"])

    def nbytes(r):
        return r["gbps"] * r["time_us"]

    rows = report["results"]
    plain = {tuple(r["shape"]): r for r in rows if r["impl"] == "cpu" and r["pass_"] == "fwd+bwd"}
    for r in (r for r in rows if r["impl"] == "cpu_vg"):
        # value-and-grad moves 2 logits' worth of bytes, not 3: its GB/s is not inflated
        assert nbytes(r) < nbytes(plain[tuple(r["shape"])])


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
    assert not bench_ops.targets_met([check])


def test_gpu_target_is_met_by_either_cuda_impl():
    import bench_ops

    def row(impl, speedup):
        return dict(op="lse_aggregate_nll", shape=[128, 16, 2], pass_="fwd+bwd", impl=impl, speedup=speedup)

    rows = [row("eager", 1.0), row("cuda", 2.45), row("floor", 4.0), row("cuda_vg", 21.0)]
    rows.append(row("triton_vg", 30.0))  # not a CUDA-kernel row: not checked
    checks = bench_ops.check_targets({"device": "cuda", "results": rows})
    assert [(c["impl"], c["met"]) for c in checks] == [("cuda", False), ("cuda_vg", True)]
    assert "max_speedup" not in checks[1]  # the autograd floor does not bound the value-and-grad op
    assert bench_ops.targets_met(checks)
    checks[1]["met"] = False
    assert not bench_ops.targets_met(checks)


def test_nll_variant_rows_switch_the_kernel_and_count_value_and_grad_bytes():
    import bench_ops

    from clipbert import ops

    seen = []

    def make(b):
        return lambda: seen.append((b, ops.get_nll_kernel()))

    def make_vg(b):
        return lambda: seen.append((b + bench_ops.VG, ops.get_nll_kernel()))

    bench_ops._START_NLL_KERNEL.clear()
    previous = ops.set_nll_kernel("stream4")  # the "start" value the plain rows are pinned to
    try:
        for _case in range(2):  # the second case's rows are made after the first's ran (a variant left set)
            fns = {"eager": lambda: None, "cpu": make("cpu"), "cpu_vg": make_vg("cpu")}
            bench_ops.add_nll_variants(fns, "cpu", make, make_vg)
            ops.set_nll_kernel("auto")  # as another row would leave it
            for name, fn in fns.items():
                if name != "eager":
                    fn()
            seen_first, seen = seen, []
    finally:
        ops.set_nll_kernel(previous)
        bench_ops._START_NLL_KERNEL.clear()
    assert seen_first[:2] == [("cpu", "stream4"), ("cpu_vg", "stream4")]
    seen = seen_first + seen
    variants = bench_ops.NLL_VARIANTS
    expected = {f"cpu[{v}]" for v in variants} | {f"cpu[{v}]_vg" for v in variants}
    assert expected | {"eager", "cpu", "cpu_vg"} == set(fns)
    # every row runs under its own variant, the plain rows under the start value
    assert ("cpu", "stream4") in seen and ("cpu_vg", "stream4") in seen
    assert {("cpu", v) for v in bench_ops.NLL_VARIANTS} <= set(seen)
    assert {("cpu_vg", v) for v in bench_ops.NLL_VARIANTS} <= set(seen)
    nbytes = {"*": 300, bench_ops.VG: 200}
    assert bench_ops.impl_bytes(nbytes, "cuda[resident]_vg") == 200
    assert bench_ops.impl_bytes(nbytes, "cuda[resident]") == 300


def test_a_variant_meeting_a_target_is_shown_but_does_not_count():
    import bench_ops

    def row(impl, copy_pct):
        shape = [4096, 16, 1540]
        return dict(op="lse_aggregate_nll", shape=shape, pass_="fwd+bwd", impl=impl, copy_pct=copy_pct)

    rows = [row("eager", 6.7), row("cuda", 70.5), row("cuda_vg", 54.5), row("cuda[stream4]", 82.0)]
    checks = bench_ops.check_targets({"device": "cuda", "results": rows})
    by_impl = {c["impl"]: c for c in checks}
    assert by_impl["cuda[stream4]"]["met"] and by_impl["cuda[stream4]"]["variant"]
    assert not by_impl["cuda"]["variant"]
    assert not bench_ops.targets_met(checks)  # the default would have to change first
    by_impl["cuda"]["met"] = True
    assert bench_ops.targets_met(checks)
