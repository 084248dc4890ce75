"""repack_carry.py re-splits stage.sh's carry folders into fewer, equal ones that unpack.sh still joins."""

import hashlib
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))

from repack_carry import MIB, repack, whole_wheels  # noqa: E402


def stage(root: Path, sizes: dict[str, int], part_mib: float, folder_mib: float) -> dict[str, bytes]:
    """Mimic stage.sh: split each wheel into parts, pack parts first-fit into folders."""
    wheels = {name: os.urandom(size) for name, size in sizes.items()}
    manifest = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in wheels.items())
    parts = []
    for name, data in wheels.items():
        step = int(part_mib * MIB)
        parts += [
            (f"{name}.part{i:02d}", data[o : o + step]) for i, o in enumerate(range(0, len(data), step))
        ]
    folder, used = 1, 0
    for name, data in sorted(parts, key=lambda p: -len(p[1])):
        if used + len(data) > folder_mib * MIB:
            folder, used = folder + 1, 0
        (root / f".carry{folder}").mkdir(exist_ok=True)
        (root / f".carry{folder}" / name).write_bytes(data)
        used += len(data)
    for d in root.glob(".carry*"):
        (d / "MANIFEST").write_text(manifest)
        (d / "unpack.sh").write_text("#!/bin/bash\n")
    return wheels


def test_repack_makes_fewer_folders_that_join_back(tmp_path):
    sizes = {"big.whl": int(2.6 * MIB), "mid.whl": int(1.1 * MIB), "small.whl": 5000, "tiny.whl": 10}
    wheels = stage(tmp_path, sizes, part_mib=1.0, folder_mib=1.12)
    assert len(list(tmp_path.glob(".carry*"))) == 4  # first-fit of whole parts, as stage.sh packs
    out = repack(tmp_path, limit_mib=1.5)
    assert [p.name for p in out] == [".carry1", ".carry2", ".carry3"]  # 3.7 MiB in folders of at most 1.5
    for folder in out:
        assert sum(p.stat().st_size for p in folder.glob("*.part*")) <= 1.5 * MIB
        assert (folder / "MANIFEST").is_file() and (folder / "unpack.sh").is_file()
    for name, data in wheels.items():  # unpack.sh: cat <wheel>.part* in name order
        parts = sorted(p for folder in out for p in folder.glob(f"{name}.part*"))
        assert b"".join(p.read_bytes() for p in sorted(parts, key=lambda p: p.name)) == data


def test_the_small_wheels_arrive_whole_in_the_first_folder(tmp_path):
    # What training needs comes first, even before DALI's smaller dependencies: the first device call can
    # install it (early_install.sh).
    sizes = {
        "dali-1.whl": int(3.2 * MIB),
        "av-1.whl": int(0.6 * MIB),
        "nvcomp-1.whl": int(0.3 * MIB),
        "deepspeed-1.whl": 4000,
        "hjson-1.whl": 10,
    }
    stage(tmp_path, sizes, part_mib=1.0, folder_mib=1.12)
    out = repack(tmp_path, limit_mib=1.5)
    assert sorted(whole_wheels(out[0])) == ["av-1.whl", "deepspeed-1.whl", "hjson-1.whl", "nvcomp-1.whl"]
    assert all(whole_wheels(folder) == [] for folder in out[1:])  # DALI is cut across the rest


def test_repack_refuses_a_corrupt_part(tmp_path):
    stage(tmp_path, {"a.whl": 3000}, part_mib=1.0, folder_mib=2.0)
    part = tmp_path / ".carry1" / "a.whl.part00"
    part.write_bytes(b"x" + part.read_bytes()[1:])
    with pytest.raises(SystemExit, match="sha256"):
        repack(tmp_path, limit_mib=1.0)
    with pytest.raises(SystemExit, match="no .carryN"):
        repack(tmp_path / "empty", limit_mib=1.0)
