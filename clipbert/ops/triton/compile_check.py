"""Compile the Triton NLL kernels for a GPU architecture without a GPU, and count their 128-bit memory ops.

    python -m clipbert.ops.triton.compile_check            # sm_90 (H100/H200)
    python -m clipbert.ops.triton.compile_check --arch 80

Why: the tests run the Triton kernels under TRITON_INTERPRET=1, which never lowers them, so an error that
only the GPU compiler raises, or loads that are not vectorized, would otherwise first show on the GPU
machine, where minutes are scarce. Each kernel is compiled as a launch would specialize it: pointers,
strides and row lengths divisible by 16 (the benchmark's [4096, 16, 1540] rows are). Must run without
TRITON_INTERPRET=1 (under it, triton.jit returns interpreted functions that cannot be compiled).
"""

from __future__ import annotations

import argparse
import os
import re
import sys


def _compile(fn, args: dict, constexprs: dict, divisible: tuple[str, ...], arch: int, num_warps: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {**args, **{name: "constexpr" for name in constexprs}}
    src = ASTSource(
        fn=fn,
        signature=signature,
        constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()},
        attrs={(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in divisible if n in signature},
    )
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps))


def check(arch: int = 90) -> list[dict]:
    """One row per compiled kernel: name, dtype, layout and its count of 128-bit global loads and stores."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile_check: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)")
    import triton.language as tl

    from clipbert.ops.triton import lse_nll

    rows = []
    shape_args = dict(N="i32", K="i32", n_el="i32", stride_b="i32", stride_n="i32", stride_k="i32")
    divisible = ("x_ptr", "t_ptr", "w_ptr", "loss_ptr", "stats_ptr", "gx_ptr", "stride_b", "stride_n", "n_el")
    for dtype, contig in (("bf16", True), ("fp32", True), ("fp64", False)):
        acc = tl.float64 if dtype == "fp64" else tl.float32
        row = dict(ACC=acc, CONTIG=contig, BLOCK=lse_nll.MAX_BLOCK, BLOCK_N=16)
        kernels = {
            "nll_fwd": (
                lse_nll._nll_fwd_kernel,
                dict(x_ptr=f"*{dtype}", t_ptr="*i64", loss_ptr="*fp32", stats_ptr="*fp32"),
                row,
            ),
            "nll_bwd": (
                lse_nll._nll_bwd_kernel,
                dict(w_ptr="*fp32", x_ptr=f"*{dtype}", t_ptr="*i64", stats_ptr="*fp32", gx_ptr=f"*{dtype}"),
                dict(ACC=acc, CONTIG=contig, BLOCK=lse_nll.BWD_BLOCK),
            ),
            "nll_value_and_grad": (
                lse_nll._nll_value_and_grad_kernel,
                dict(x_ptr=f"*{dtype}", t_ptr="*i64", loss_ptr="*fp32", gx_ptr=f"*{dtype}", denom="i32"),
                row,
            ),
        }
        for name, (fn, ptrs, constexprs) in kernels.items():
            compiled = _compile(fn, {**ptrs, **shape_args}, constexprs, divisible, arch, num_warps=4)
            ptx = compiled.asm["ptx"]
            rows.append(
                dict(
                    kernel=name,
                    dtype=dtype,
                    contiguous=contig,
                    v4_loads=len(re.findall(r"ld\.global(?:\.\w+)*\.v4", ptx)),
                    v4_stores=len(re.findall(r"st\.global(?:\.\w+)*\.v4", ptx)),
                )
            )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90)")
    args = parser.parse_args(argv)
    for r in check(args.arch):
        layout = "contiguous" if r["contiguous"] else "strided"
        print(
            f"sm_{args.arch} {r['kernel']:20} {r['dtype']:5} {layout:10} 128-bit loads {r['v4_loads']}, "
            f"stores {r['v4_stores']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
