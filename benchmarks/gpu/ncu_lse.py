"""The NLL kernels at the issue's large shape, for Nsight Compute: why they reach what copy fraction.

bench_ops.py times lse_aggregate_nll fwd+bwd at [4096, 16, 1540] bf16 against the card's copy bandwidth
(H100: 81.9%, H200: 70.5% on 2026-11-27; target 80%). This runs each NLL kernel (forward, backward,
value-and-grad) once to warm up and once more to be profiled, under each kernel variant asked for
(clipbert.ops.set_nll_kernel; by default the H100-tuned "stream2" and the new "resident"); run_all.sh's `ncu`
step wraps it and profiles every launch after the first warm-up round:

    ncu --kernel-name regex:nll --launch-skip 3 --launch-count 9 --section SpeedOfLight --section Occupancy \
        --section LaunchStats --section WarpStateStats --csv python3 benchmarks/gpu/ncu_lse.py

DRAM throughput, achieved occupancy, registers per thread and the top warp stall reasons say whether a
kernel is short of bytes in flight (latency) or of issue slots (its exps).
"""

from __future__ import annotations

import argparse

import torch

from clipbert import ops


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=3, default=(4096, 16, 1540), metavar=("B", "N", "K"))
    parser.add_argument(
        "--nll-kernels",
        default="stream2,resident",
        help=f"comma-separated variants, in order (of {', '.join(ops.NLL_KERNELS)})",
    )
    args = parser.parse_args(argv)
    variants = args.nll_kernels.split(",")
    for v in variants:
        if v not in ops.NLL_KERNELS:
            parser.error(f"--nll-kernels: {v!r} is not one of {ops.NLL_KERNELS}")
    if not torch.cuda.is_available():
        raise SystemExit("ncu_lse: needs a CUDA device")
    b, n, k = args.shape
    x = torch.randn(b, n, k, device="cuda").to(torch.bfloat16).requires_grad_()
    target = torch.randint(0, k, (b,), device="cuda")
    for variant in variants:
        ops.set_nll_kernel(variant)
        for _ in range(2):  # 3 launches of kernels named *nll* a round: forward, backward, value-and-grad
            loss = ops.lse_aggregate_nll(x, target, backend="cuda")
            (grad,) = torch.autograd.grad(loss, x)
            loss_vg, grad_vg = ops.lse_aggregate_nll_value_and_grad(x.detach(), target, backend="cuda")
            torch.cuda.synchronize()
        err = (grad_vg.float() - grad.float()).abs().max() / grad.float().abs().max()
        if err > 1e-2:  # the same gradient, bf16 rounding aside
            raise SystemExit(
                f"ncu_lse: {variant}: value-and-grad and autograd gradients differ by {err:.3g} of their max"
            )
        values = f"loss {loss.item():.6f} (value-and-grad {loss_vg.item():.6f})"
        print(f"{variant}: {values} at [{b}, {n}, {k}] bf16")


if __name__ == "__main__":
    main()
