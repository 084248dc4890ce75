"""Where a benchmark writes its result when no --out (or --tag) is given."""

from __future__ import annotations

from pathlib import Path


def unused_default(path: Path) -> Path:
    """`path`, else the first of `<stem>_run2<suffix>`, `_run3`, ... that does not exist, said on stdout.

    Why: a default name holds the device and the date, not the settings, so a second run (other flags, or
    one its caller's time limit stopped after its first rows: the file is rewritten after each) replaced
    the complete result of the first without a word, e.g. the committed fig5_cpu_small.* of all four panels
    by one panel's. An --out or --tag given is written over: the user chose it."""
    path = Path(path)
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}_run{number}{path.suffix}")
    if candidate != path:
        print(f"{path.name} holds an earlier result: this run writes {candidate.name}", flush=True)
    return candidate
