"""Re-split the wheels that ../shared/device/stage.sh staged into as few carry folders as the limit allows.

stage.sh packs whole 50 MiB parts first-fit into 56 MiB folders: DeepSpeed, DALI and PyAV (about 290 MiB)
become seven folders, so seven device calls. One call may carry at most 64 MiB with the working tree, so
five folders of about 58 MiB are enough; each device call then carries one folder while doing real work.

    bash ../shared/device/stage.sh deepspeed dali av && python3 benchmarks/gpu/repack_carry.py

Parts keep stage.sh's naming (`<wheel>.partNN`, joined in name order by unpack.sh, which checks each
wheel's sha256 against MANIFEST), so unpack.sh works unchanged. Run from the repository root.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import shutil
import sys
from pathlib import Path

PART = re.compile(r"^(?P<wheel>.+\.whl)\.part(?P<index>\d+)$")
MIB = 2**20
# Wheel-name prefixes of what the `train` step needs beyond the GPU machine's own packages.
TRAIN_FIRST = ("deepspeed-", "hjson-", "pydantic-", "pydantic_core-", "annotated_types-", "typing_", "av-")


def read_wheels(folders: list[Path]) -> dict[str, bytes]:
    """Every wheel, joined from its parts across the folders, checked against MANIFEST."""
    parts: dict[str, list[tuple[int, Path]]] = {}
    for folder in folders:
        for path in folder.iterdir():
            match = PART.match(path.name)
            if match:
                parts.setdefault(match["wheel"], []).append((int(match["index"]), path))
    wheels = {name: b"".join(p.read_bytes() for _, p in sorted(found)) for name, found in parts.items()}
    for line in (folders[0] / "MANIFEST").read_text().splitlines():
        digest, name = line.split()
        if name not in wheels:
            raise SystemExit(f"repack: {name} is in MANIFEST but no part of it was found")
        if hashlib.sha256(wheels[name]).hexdigest() != digest:
            raise SystemExit(f"repack: {name} does not match its sha256 in MANIFEST")
    return wheels


def repack(root: Path, limit_mib: float) -> list[Path]:
    """Rewrite root/.carry1..N as the fewest folders of at most `limit_mib` MiB each; returns them."""
    folders = sorted(root.glob(".carry[0-9]*"), key=lambda p: int(p.name[len(".carry") :]))
    if not folders:
        raise SystemExit("repack: no .carryN folders: run ../shared/device/stage.sh first")
    wheels = read_wheels(folders)
    extras = {name: (folders[0] / name).read_bytes() for name in ("MANIFEST", "unpack.sh")}
    total = sum(map(len, wheels.values()))
    count = math.ceil(total / (limit_mib * MIB))
    size = math.ceil(total / count)  # equal shares: each folder is at most the limit
    for folder in folders:
        shutil.rmtree(folder)
    out = [root / f".carry{i + 1}" for i in range(count)]
    for folder in out:
        folder.mkdir()
        for name, data in extras.items():
            (folder / name).write_bytes(data)
    # One stream of all wheels, cut at equal sizes; a wheel cut in two gets consecutive part numbers.
    # What training needs first (DeepSpeed, its dependencies, PyAV), then the rest, smallest first: those
    # wheels arrive whole in .carry1, so the first device call can install them
    # (benchmarks/gpu/early_install.sh) and train while DALI's parts are still travelling.
    folder, used = 0, 0
    for name in sorted(wheels, key=lambda n: (not n.startswith(TRAIN_FIRST), len(wheels[n]), n)):
        data, index, offset = wheels[name], 0, 0
        while offset < len(data):
            if used >= size:
                folder, used = folder + 1, 0
            take = min(size - used, len(data) - offset)
            (out[folder] / f"{name}.part{index:02d}").write_bytes(data[offset : offset + take])
            offset, used, index = offset + take, used + take, index + 1
    return out


def whole_wheels(folder: Path) -> list[str]:
    """The wheels whose every part is in `folder` (a wheel's parts are numbered from 00 without gaps)."""
    found: dict[str, list[int]] = {}
    for path in folder.iterdir():
        match = PART.match(path.name)
        if match:
            found.setdefault(match["wheel"], []).append(int(match["index"]))
    return [
        name
        for name, idx in found.items()
        if sorted(idx) == list(range(len(idx))) and not _has_more(name, folder, len(idx))
    ]


def _has_more(wheel: str, folder: Path, count: int) -> bool:
    """Whether part `count` of `wheel` is in a sibling .carryN folder (then the wheel is not whole here)."""
    return any((other / f"{wheel}.part{count:02d}").exists() for other in folder.parent.glob(".carry[0-9]*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root holding .carryN")
    parser.add_argument(
        "--limit-mib", type=float, default=60.0, help="largest folder (the working tree also travels)"
    )
    args = parser.parse_args(argv)
    out = repack(args.root, args.limit_mib)
    for folder in out:
        mib = sum(p.stat().st_size for p in folder.iterdir()) / MIB
        whole = sorted(whole_wheels(folder))
        print(f"{folder.name}: {mib:.1f} MiB; whole wheels: {', '.join(whole) or 'none'}")
    print(f"{len(out)} folders: carry .carry1 .. .carry{len(out)}, one per device call; source the last")
    return 0


if __name__ == "__main__":
    sys.exit(main())
