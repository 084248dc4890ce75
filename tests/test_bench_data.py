"""The data benchmark runs end to end on the CPU (tiny sizes) and writes its table and JSON."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("av", reason="PyAV is not installed")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_bench_data_cpu_smoke(tmp_path, capsys):
    import bench_data

    out = tmp_path / "data.json"
    argv = "--device cpu --num-videos 2 --seconds 2 --fps 10 --batches 2 --batch-size 2 --size 64 --workers 0"
    bench_data.main(argv.split() + ["--only", "pyav,frame_store", "--out", str(out)])
    report = json.loads(out.read_text())
    rows = {r["variant"]: r for r in report["results"]}
    assert set(rows) == {
        "pyav h264 gop30 workers=0",
        "pyav h264 gop4 workers=0",
        "frame_store cpu-jpeg workers=0",
    }
    for row in rows.values():
        assert "error" not in row, row
        # 2 timed batches x 2 samples x 4 clips x 2 frames
        assert row["frames"] == 32 and row["frames_per_s"] > 0
    assert "| pyav h264 gop30 workers=0" in capsys.readouterr().out
