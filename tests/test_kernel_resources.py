"""benchmarks/kernel_resources.py reads cuobjdump's resource table and shortens demangled kernel names."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import kernel_resources  # noqa: E402

TABLE = """
Fatbin elf code:
================
arch = sm_90
code version = [1,8]
host = linux
compile_size = 64bit

Resource usage:
 Common:
  GLOBAL:0
 Function _ZN8clipbert4cuda19nll_resident_kernelIN3c108BFloat16ELi8ELi512ELi8ELb1EEEvPKT_:
  REG:64 STACK:0 SHARED:1088 LOCAL:0 CONSTANT[0]:600 TEXTURE:0 SURFACE:0 SAMPLER:0
Fatbin elf code:
arch = sm_80
 Function _Z3foov:
  REG:40 STACK:104 SHARED:0 LOCAL:0 CONSTANT[0]:360 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_parse_resource_usage_reads_every_function_with_its_arch():
    rows = kernel_resources.parse_resource_usage(TABLE)
    assert [(r["arch"], r["registers"], r["stack"], r["shared"]) for r in rows] == [
        ("sm_90", 64, 0, 1088),
        ("sm_80", 40, 104, 0),
    ]
    assert rows[0]["mangled"].startswith("_ZN8clipbert4cuda19nll_resident_kernel")


def test_short_name_drops_namespaces_and_the_argument_list():
    demangled = (
        "void clipbert::cuda::(anonymous namespace)::nll_fwd_kernel<c10::BFloat16, 256, 8, 256, 4>"
        "(c10::BFloat16 const*, long const*, float*, float*, long, long, long, bool, float)"
    )
    assert kernel_resources.short_name(demangled) == "nll_fwd_kernel<c10::BFloat16, 256, 8, 256, 4>"
    assert kernel_resources.short_name("void foo(int)") == "foo"
