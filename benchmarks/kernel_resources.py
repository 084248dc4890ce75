"""What the compilers made of the kernels, without a GPU: registers and stack per CUDA kernel, 128-bit memory
ops per Triton NLL kernel.

    .venv/bin/python benchmarks/kernel_resources.py              # prints, writes benchmarks/results/...json
    .venv/bin/python benchmarks/kernel_resources.py --filter nll

CUDA: `cuobjdump --dump-resource-usage` on the built clipbert._cuda (the cuobjdump that ships with Triton when
the toolkit has none) gives each kernel's registers per thread and stack bytes (spills show as stack), for
every architecture in TORCH_CUDA_ARCH_LIST. Registers bound occupancy (65,536 per SM), and occupancy bounds
the bytes a memory-bound kernel keeps in flight. Triton: clipbert.ops.triton.compile_check (TRITON_INTERPRET
must be unset).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import re
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_FUNCTION = re.compile(r"Function (\S+):")
_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_ARCH = re.compile(r"arch = (sm_\d+a?)")


def _cuobjdump() -> str:
    found = shutil.which("cuobjdump")
    if found:
        return found
    import triton

    bundled = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if bundled.exists():
        return str(bundled)
    raise FileNotFoundError("cuobjdump: not on PATH and not shipped with triton")


def _demangle(names: list[str]) -> list[str]:
    if not names or shutil.which("c++filt") is None:
        return names
    out = subprocess.run(
        ["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True
    ).stdout
    return out.splitlines()


def short_name(demangled: str) -> str:
    """`void clipbert::cuda::(anonymous namespace)::nll_fwd_kernel<c10::BFloat16, 256, 8, 256, 4>(...)` ->
    `nll_fwd_kernel<c10::BFloat16, 256, 8, 256, 4>`."""
    name = demangled.replace("(anonymous namespace)::", "")
    name = re.sub(r"^void ", "", name)
    depth, end = 0, len(name)
    for i, ch in enumerate(name):  # cut at the argument list: the first '(' outside the template brackets
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0:
            end = i
            break
    return name[:end].replace("clipbert::cuda::", "")


def parse_resource_usage(text: str) -> list[dict]:
    """Rows (arch, mangled name, registers, stack, shared, local) from cuobjdump --dump-resource-usage."""
    rows, arch, lines = [], None, text.splitlines()
    for i, line in enumerate(lines):
        a = _ARCH.search(line)
        if a:
            arch = a.group(1)
        f = _FUNCTION.search(line)
        if f and i + 1 < len(lines):
            u = _USAGE.search(lines[i + 1])
            if u:
                reg, stack, shared, local = map(int, u.groups())
                rows.append(
                    dict(
                        arch=arch, mangled=f.group(1), registers=reg, stack=stack, shared=shared, local=local
                    )
                )
    return rows


def cuda_kernels(pattern: str) -> list[dict]:
    lib = next(iter((ROOT / "clipbert").glob("_cuda*.so")), None)
    if lib is None:
        raise FileNotFoundError("clipbert/_cuda*.so is not built (make setup with nvcc, or CLIPBERT_CUDA=1)")
    text = subprocess.run(
        [_cuobjdump(), "--dump-resource-usage", str(lib)], capture_output=True, text=True, check=True
    ).stdout
    rows = parse_resource_usage(text)
    for row, name in zip(rows, _demangle([r["mangled"] for r in rows]), strict=True):
        row["kernel"] = short_name(name)
        del row["mangled"]
    return sorted(
        (r for r in rows if re.search(pattern, r["kernel"])), key=lambda r: (r["arch"] or "", r["kernel"])
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="", help="regex on the CUDA kernel names (default: all)")
    parser.add_argument("--no-triton", action="store_true", help="skip the Triton compile check")
    parser.add_argument(
        "--out", type=pathlib.Path, default=None, help="JSON path (default benchmarks/results/)"
    )
    args = parser.parse_args(argv)
    import torch
    import triton

    report = dict(
        date=datetime.date.today().isoformat(),
        device="none: static facts of the compiled code",
        torch=torch.__version__,
        triton=triton.__version__,
        cuda=cuda_kernels(args.filter),
    )
    for r in report["cuda"]:
        spill = f", stack {r['stack']} B" if r["stack"] else ""
        print(f"{r['arch']:7} {r['kernel']:64} {r['registers']:3} registers{spill}")
    if not args.no_triton:
        from clipbert.ops.triton import compile_check

        report["triton_sm_90"] = compile_check.check(90)
        for r in report["triton_sm_90"]:
            print(
                f"triton sm_90 {r['kernel']:20} {r['dtype']:5} contiguous={r['contiguous']}: "
                f"128-bit loads {r['v4_loads']}, stores {r['v4_stores']}"
            )
    out = args.out or ROOT / "benchmarks" / "results" / f"kernel_resources_{report['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
