"""Benchmark of the fused clip ops against eager PyTorch.

Per op, shape and backend: time per call, effective GB/s (compulsory bytes: inputs read once, outputs
written once), % of the device-to-device copy bandwidth measured in the same run, and the speedup over
eager PyTorch as the original ClipBERT code writes it (x.mean(1); torch.logsumexp over clips, then
log_softmax / cross_entropy). Prints a table, checks the issue's targets and writes JSON.

The bytes are each pass's own: a fwd+bwd row through autograd is two kernels, the forward reading the
logits and the backward reading them again and writing the gradient (3x the logits), while a value-and-grad
row (`_vg`) is one kernel that reads them once (2x). So % of copy says how close each implementation's
kernels run to the bandwidth their own traffic needs, and it is not comparable between the two kinds:
compare those by time (at [4096, 16, 1540] on the H200, cuda fwd+bwd 203 us at 70.5% vs cuda_vg 175 us at
54.5%, 2026-11-27). The issue's 80% target for lse_aggregate_nll fwd+bwd is read on the autograd rows.

    python benchmarks/bench_ops.py --device cpu
    python benchmarks/bench_ops.py --device cuda --out benchmarks/results/ops_h100.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from result_paths import unused_default  # noqa: E402  (beside this script)

from clipbert import ops  # noqa: E402
from clipbert.perf.devices import card_slug  # noqa: E402

BF16 = torch.bfloat16
F32 = torch.float32
# (shape, dtype) per op and device. GPU shapes are the issue's; CPU shapes are smaller versions.
SHAPES = {
    "cuda": {
        "temporal_mean": [
            ((128, 2, 2048, 14, 14), BF16),
            ((64, 8, 2048, 14, 14), BF16),
            ((128, 2, 768, 7, 7), BF16),
        ],
        "lse": [((128, 16, 2), BF16), ((128, 16, 1540), BF16), ((4096, 16, 1540), BF16)],
    },
    "cpu": {
        "temporal_mean": [
            ((16, 2, 256, 14, 14), F32),
            ((16, 2, 256, 14, 14), BF16),
            ((8, 8, 128, 7, 7), F32),
        ],
        "lse": [((128, 16, 2), F32), ((128, 16, 1540), F32), ((512, 16, 154), BF16)],
    },
}
# GPU targets from the issue: (op, shape, pass) -> ("copy_pct", minimum) or ("speedup", minimum).
GPU_TARGETS = {
    ("temporal_mean", (128, 2, 2048, 14, 14), "fwd"): ("copy_pct", 85.0),
    ("lse_aggregate_nll", (128, 16, 2), "fwd+bwd"): ("speedup", 20.0),
    ("lse_aggregate_nll", (4096, 16, 1540), "fwd+bwd"): ("copy_pct", 80.0),
}


VG = "_vg"  # impl suffix of the rows that time lse_aggregate_nll_value_and_grad
# The CUDA NLL kernels' variants (clipbert.ops.set_nll_kernel), timed side by side at the long-row shapes as
# "cuda[<variant>]" rows next to "cuda" (the variant the process started with), so one GPU run says which
# streams a row fastest on its card.
NLL_VARIANTS = ("stream2", "stream4", "resident")
NLL_VARIANT_MIN_K = 256


def impl_bytes(nbytes, impl: str) -> float:
    """A case's bytes for `impl`: one number for every impl, or {"*": default, VG: value-and-grad rows}."""
    if not isinstance(nbytes, dict):
        return nbytes
    return nbytes[VG] if impl.endswith(VG) else nbytes["*"]


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _time_once(fn, device: str, reps: int) -> float:
    """Mean seconds per call over `reps` back-to-back calls."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def time_calls(fns: dict, device: str, reps: int, trials: int = 7, errors: dict | None = None) -> dict:
    """Median over trials of the seconds per call of each fn. Trials interleave the fns, so that load from
    other processes on a shared machine hits all of them alike. With `errors`, a fn that raises in its
    warm-up (a Triton kernel that fails to compile for one shape) is left out and its error put there;
    without, it raises."""
    failed = {}
    for name, fn in fns.items():
        try:
            for _ in range(max(2, reps // 5)):
                fn()
        except Exception as err:
            if errors is None:
                raise
            failed[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            print(f"  {name} failed, not timed: {failed[name]}")
    if errors is not None:
        errors.update(failed)
    fns = {name: fn for name, fn in fns.items() if name not in failed}
    _sync(device)
    samples = {name: [] for name in fns}
    for _ in range(trials):
        for name, fn in fns.items():
            samples[name].append(_time_once(fn, device, reps))
    return {name: statistics.median(v) for name, v in samples.items()}


def copy_bandwidth(device: str) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written)."""
    n = (1 << 30) if device == "cuda" else (64 << 20)
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    t = time_calls({"copy": lambda: dst.copy_(src)}, device, reps=20 if device == "cuda" else 10)["copy"]
    return 2 * n / t / 1e9


def _es(dtype):
    return torch.empty((), dtype=dtype).element_size()


def eager_lse(x):
    return torch.log_softmax(torch.logsumexp(x.float(), dim=1), dim=-1)


def eager_nll(x, t):
    return F.cross_entropy(torch.logsumexp(x.float(), dim=1), t)


def cases(device: str, skipped: dict | None = None):
    """Yields (op, shape, pass, dtype, bytes, {impl: fn}) with impl "eager" or a backend name; a backend
    that cannot run here is left out, and with `skipped` its reason is put there."""
    backends = ["cuda", "triton"] if device == "cuda" else ["cpu", "reference"]
    backends = [b for b in backends if _usable(b, device, skipped)]
    for shape, dtype in SHAPES[device]["temporal_mean"]:
        x = torch.randn(shape, device=device).to(dtype)
        nbytes = x.numel() * _es(dtype) * (1 + 1 / shape[1])
        fns = {"eager": lambda x=x: x.mean(1)}
        fns.update({b: (lambda x=x, b=b: ops.temporal_mean(x, backend=b)) for b in backends})
        yield "temporal_mean", shape, "fwd", dtype, nbytes, fns
    for shape, dtype in SHAPES[device]["lse"]:
        yield from lse_cases(shape, dtype, device, backends)


def lse_cases(shape, dtype, device: str, backends: list[str]):
    B, _, K = shape
    x = torch.randn(shape, device=device).to(dtype)
    xg = x.clone().requires_grad_()
    t = torch.randint(0, K, (B,), device=device)
    g = torch.randn(B, K, device=device)
    x_bytes = x.numel() * _es(dtype)

    def lse_fwd(b):
        return lambda: ops.lse_aggregate(x, backend=b)

    def lse_fwd_bwd(b):
        return lambda: torch.autograd.grad(ops.lse_aggregate(xg, backend=b), xg, g)

    def nll_fwd(b):
        return lambda: ops.lse_aggregate_nll(x, t, backend=b)

    def nll_fwd_bwd(b):
        return lambda: torch.autograd.grad(ops.lse_aggregate_nll(xg, t, backend=b), xg)

    eager = {
        lse_fwd: lambda: eager_lse(x),
        lse_fwd_bwd: lambda: torch.autograd.grad(eager_lse(xg), xg, g),
        nll_fwd: lambda: eager_nll(x, t),
        nll_fwd_bwd: lambda: torch.autograd.grad(eager_nll(xg, t), xg),
    }
    specs = [
        ("lse_aggregate", "fwd", x_bytes + B * K * 4, lse_fwd),
        ("lse_aggregate", "fwd+bwd", 3 * x_bytes + 3 * B * K * 4, lse_fwd_bwd),
        ("lse_aggregate_nll", "fwd", x_bytes + B * 8, nll_fwd),
        ("lse_aggregate_nll", "fwd+bwd", 3 * x_bytes + 2 * B * 8, nll_fwd_bwd),
    ]
    for op, kind, nbytes, make in specs:
        fns = {"eager": eager[make], **{b: make(b) for b in backends}}
        if kind == "fwd+bwd":
            # What any op pays for one autograd.grad call here (the engine, on CUDA its device thread, and two
            # tiny kernels): the eager/floor ratio bounds the speedup that this measurement can show.
            fns["floor"] = lambda: torch.autograd.grad(xg.sum(), xg)
        make_vg = None
        if make is nll_fwd_bwd:
            # The same loss and gradient from the value-and-grad op: one launch, no autograd engine, and
            # the logits read once (its bytes: logits in, gradient out, targets in).
            def make_vg(b):
                return lambda: ops.lse_aggregate_nll_value_and_grad(x, t, backend=b)

            for b in backends:
                fns[f"{b}{VG}"] = make_vg(b)
            nbytes = {"*": nbytes, VG: 2 * x_bytes + B * 8}
        if op == "lse_aggregate_nll" and "cuda" in backends and K >= NLL_VARIANT_MIN_K:
            add_nll_variants(fns, "cuda", make, make_vg)
        yield op, shape, kind, dtype, nbytes, fns


def with_nll_kernel(variant: str, fn):
    """fn, run with the NLL kernel variant set first (a host-side switch; the kernels read it at launch)."""

    def call():
        ops.set_nll_kernel(variant)
        return fn()

    return call


_START_NLL_KERNEL: dict[str, str] = {}  # the NLL kernel variant the process started with (add_nll_variants)


def add_nll_variants(fns: dict, backend: str, make, make_vg=None) -> None:
    """Adds a "<backend>[<variant>]" row (and its value-and-grad row) per NLL kernel variant, and pins the
    plain "<backend>" rows to the variant the process started with, since every row now switches it."""
    # read once: from the second case on, the current variant is whatever the previous case's rows left
    # (the last, "resident"), and the default rows, the target among them, would run that
    start = _START_NLL_KERNEL.setdefault("variant", ops.get_nll_kernel())
    fns[backend] = with_nll_kernel(start, fns[backend])
    if make_vg is not None:
        fns[f"{backend}{VG}"] = with_nll_kernel(start, fns[f"{backend}{VG}"])
    for v in NLL_VARIANTS:
        fns[f"{backend}[{v}]"] = with_nll_kernel(v, make(backend))
        if make_vg is not None:
            fns[f"{backend}[{v}]{VG}"] = with_nll_kernel(v, make_vg(backend))


def _usable(backend: str, device: str, skipped: dict | None = None) -> bool:
    try:
        ops._backend.resolve(backend, torch.device(device))
        return True
    except RuntimeError as err:
        print(f"skipping backend {backend}: {err}")
        if skipped is not None:
            skipped[backend] = str(err)
        return False


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def write_report(report: dict, out: pathlib.Path) -> None:
    """Atomic: a kill mid-write (run_all.sh's `timeout`) leaves the previous report, not a truncated one."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def run(device: str, reps: int, out: pathlib.Path | None = None) -> dict:
    """Times every case; with `out`, rewrites it after each case ("complete": false), so a run stopped by
    its caller's time limit keeps the cases it timed."""
    copy_gbps = copy_bandwidth(device)
    print(f"{device_name(device)} | torch {torch.__version__} | threads {torch.get_num_threads()}")
    print(f"device-to-device copy bandwidth: {copy_gbps:.1f} GB/s\n")
    header = f"{'op':18} {'shape':24} {'pass':8} {'impl':18} {'time_us':>10} {'GB/s':>8} {'%copy':>6}"
    header += f" {'vs eager':>9}"
    print(header + "\n" + "-" * len(header))
    report = dict(
        device=device,
        device_name=device_name(device),
        torch=torch.__version__,
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        threads=torch.get_num_threads(),
        copy_gbps=copy_gbps,
    )
    rows = []
    skipped: dict[str, str] = {}  # backend -> why it cannot run here (no CUDA extension, no Triton)
    for op, shape, kind, dtype, nbytes, fns in cases(device, skipped):
        errors: dict[str, str] = {}
        times = time_calls(fns, device, reps, errors=errors)
        eager_t = times.get("eager")
        for impl in fns:
            t = times.get(impl)
            ok = t is not None and t > 0  # a timer that read 0 gives no rate, not a ZeroDivisionError
            # the floor moves none of the op's bytes
            gbps = None if impl == "floor" or not ok else impl_bytes(nbytes, impl) / t / 1e9
            row = dict(
                op=op,
                shape=list(shape),
                dtype=str(dtype).replace("torch.", ""),
                pass_=kind,
                impl=impl,
                time_us=None if t is None else t * 1e6,
                gbps=gbps,
                copy_pct=None if gbps is None or not copy_gbps else 100 * gbps / copy_gbps,
                speedup=eager_t / t if ok and eager_t else None,
            )
            if impl in errors:
                row["error"] = errors[impl]
            rows.append(row)
            head = f"{op:18} {str(tuple(shape)):24} {kind:8} {impl:18}"
            if t is None:
                print(f"{head} {'failed':>10}: {errors.get(impl)}")
                continue
            bw = "       -      -" if gbps is None else f"{gbps:8.1f} {_cell(row['copy_pct'], '6.1f')}"
            print(f"{head} {t * 1e6:10.1f} {bw} {_cell(row['speedup'], '8.2f')}x")
        if out is not None:
            write_report(report | {"results": rows, "skipped_backends": skipped, "complete": False}, out)
    for backend, why in skipped.items():
        print(f"{'(every op)':18} {'':24} {'':8} {backend:18} {'skipped':>10}: {why}")
    return report | {"results": rows, "skipped_backends": skipped}


def _cell(value, spec: str) -> str:
    return format(value, spec) if value is not None else format("-", f">{spec.split('.')[0]}")


def check_targets(report: dict) -> list[dict]:
    """GPU: the issue's targets, one check per CUDA impl that computes the op (`cuda`, and for the NLL
    fwd+bwd also `cuda_vg`), plus one per NLL kernel variant row (`variant`: shown, but only the default
    counts in targets_met). CPU: the C++ kernels are at least as fast as eager at every case."""
    checks = []
    if report["device"] == "cuda":
        for (op, shape, kind), (metric, minimum) in GPU_TARGETS.items():
            for r in report["results"]:
                if (r["op"], tuple(r["shape"]), r["pass_"]) != (op, shape, kind):
                    continue
                variant = r["impl"].startswith("cuda[")
                if r["impl"] in ("cuda", "cuda" + VG) or variant:
                    checks.append(
                        dict(
                            target=f"{op} {shape} {kind} {metric} >= {minimum}",
                            impl=r["impl"],
                            value=r[metric],
                            met=r[metric] is not None and r[metric] >= minimum,
                            **({"why": r["error"]} if r.get("error") else {}),
                            variant=variant,
                            **_floor_bound(report, r) if metric == "speedup" and r["impl"] == "cuda" else {},
                        )
                    )
        if not checks:
            # No CUDA-kernel row at all (the extension did not build or load): every target is NOT MET, with
            # the reason. There used to be no check, and targets_met() of no checks said every target held.
            for (op, shape, kind), (metric, minimum) in GPU_TARGETS.items():
                target = f"{op} {shape} {kind} {metric} >= {minimum}"
                checks.append(
                    dict(target=target, impl="cuda", value=None, met=False, why=_unmeasured(report))
                )
    else:
        for r in report["results"]:
            if r["impl"] in ("cpu", "cpu" + VG):
                checks.append(
                    dict(
                        target=f"{r['op']} {tuple(r['shape'])} {r['pass_']} {r['impl']}/eager speedup >= 1",
                        impl=r["impl"],
                        value=r["speedup"],
                        met=r["speedup"] is not None and r["speedup"] >= 1.0,
                        **({"why": r["error"]} if r.get("error") else {}),
                    )
                )
        if not checks:
            target = "C++ CPU kernels (backend cpu) timed against eager"
            checks.append(dict(target=target, impl="cpu", value=None, met=False, why=_unmeasured(report)))
    print()
    for c in checks:
        # The floor bounds what any op measured through autograd.grad can show; the _vg rows bypass it.
        bound = f" (the autograd floor allows at most {c['max_speedup']:.1f}x)" if "max_speedup" in c else ""
        bound += " (a variant: set_nll_kernel picks it; not the default)" if c.get("variant") else ""
        value = "not measured" if c["value"] is None else f"{c['value']:.2f}"
        value += f" ({c['why']})" if c.get("why") else ""
        print(f"{'MET    ' if c['met'] else 'NOT MET'} {c['target']} [{c['impl']}]: {value}{bound}")
    return checks


def _unmeasured(report: dict) -> str:
    """Why a target has no measured row: the backend that was skipped, or the error of its rows."""
    backend = "cuda" if report["device"] == "cuda" else "cpu"
    why = report.get("skipped_backends", {}).get(backend)
    if why:
        return f"backend {backend} skipped: {why}"
    errors = [r["error"] for r in report["results"] if r["impl"] == backend and r.get("error")]
    return f"backend {backend} failed: {errors[0]}" if errors else f"no {backend} row measured"


def targets_met(checks: list[dict]) -> bool:
    """Every target met by at least one of the default impls checked for it (`cuda` or `cuda_vg`); a
    variant row meeting it says which default to change, and does not count until that is done."""
    met: dict[str, bool] = {}
    for c in checks:
        met[c["target"]] = met.get(c["target"], False) or (c["met"] and not c.get("variant", False))
    return all(met.values())


def _floor_bound(report: dict, row: dict) -> dict:
    """{"max_speedup": eager / floor} for a fwd+bwd row, when its case measured the autograd floor."""
    for r in report["results"]:
        if (r["op"], r["shape"], r["pass_"], r["impl"]) == (row["op"], row["shape"], row["pass_"], "floor"):
            return {} if r["speedup"] is None else {"max_speedup": r["speedup"]}
    return {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="calls per timing trial (default 100 cuda, 10 cpu)"
    )
    parser.add_argument(
        "--out", type=pathlib.Path, default=None, help="JSON path (default benchmarks/results/...)"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    # A negative --reps timed zero calls and wrote negative times as results; 0 meant the default.
    if args.reps is not None and args.reps < 1:
        parser.error(f"argument --reps: must be at least 1, got {args.reps}")
    # Checked before the minutes of timing, which an --out that is a folder or lies under a file threw away
    # with a traceback at the end.
    if args.out is not None:
        if args.out.is_dir():
            parser.error(f"argument --out: {args.out} is a folder, not a JSON file path")
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            parser.error(f"argument --out: cannot create folder {args.out.parent}: {err}")
    torch.manual_seed(0)
    if args.out is None:
        tag = "cpu" if args.device == "cpu" else card_slug(device_name(args.device))
        args.out = unused_default(
            ROOT / "benchmarks" / "results" / f"ops_{tag}_{datetime.date.today().isoformat()}.json"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = run(args.device, args.reps or (100 if args.device == "cuda" else 10), out=args.out)
    report["targets"] = check_targets(report)
    write_report(report | {"complete": True}, args.out)
    print(f"\nwrote {os.path.relpath(args.out)}")
    return 0 if targets_met(report["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
