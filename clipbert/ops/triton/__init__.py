"""Triton kernels for the clip ops (one file per op: @triton.jit kernels and their asserting launchers).
Modules here import triton at import time; clipbert.ops imports them lazily, so triton stays optional."""
