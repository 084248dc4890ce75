"""The data benchmark runs end to end on the CPU (tiny sizes) and writes its table and JSON."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("av", reason="PyAV is not installed")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_bench_data_cpu_smoke(tmp_path, capsys, monkeypatch):
    import bench_data

    # through the process pools that the GPU machine's 16 x 300 frames take (this small set stays in-process)
    monkeypatch.setattr(bench_data, "IN_PROCESS_FRAMES", 0)
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


def test_bench_data_times_past_what_workers_prefetched(tmp_path):
    # 2 workers x prefetch_factor 2 could hold 4 batches before the clock starts: the warm-up drains them,
    # and at least 2 batches per worker are timed (here 4, though --batches asks for 2).
    import bench_data

    out = tmp_path / "data.json"
    argv = "--device cpu --num-videos 2 --seconds 2 --fps 10 --batches 2 --batch-size 2 --size 64 --workers 2"
    bench_data.main(argv.split() + ["--only", "pyav h264 gop30", "--out", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    assert "error" not in row, row
    assert row["frames"] == 4 * 2 * 4 * 2  # batches x samples x clips x frames


def test_nvdec_diagnose_runs_on_the_cpu_decoder(tmp_path, monkeypatch):
    # The GPU diagnostic's cache, raw-decoder and painted-index checks, run through DALI's CPU decoder on VP9
    # (H.264 needs NVDEC).
    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))
    import nvdec_diagnose

    monkeypatch.setattr(nvdec_diagnose, "SIZES", ((36, 64, 12),))
    (row,) = nvdec_diagnose.raw_checks(tmp_path, "cpu", "vp9")
    assert row["shape"] == row["expected_shape"] == [4, 36, 64, 3]
    assert row["got"] == row["requested"] == [33, 7, 0, 25]
    painted = nvdec_diagnose.painted_checks(tmp_path, "cpu", "vp9")  # each order x index pattern
    assert len(painted) == 2 * len(nvdec_diagnose.PATTERNS) and all(r["match"] for r in painted), painted
    # The cache sequence: cropped, uncropped, cropped. The CPU decoder has no decoder cache, so all three
    # match PyAV, and with VP9's 8-pixel blocks 96x72 is not cropped, so the guard flags nothing.
    cache = nvdec_diagnose.cache_checks(tmp_path, "cpu", "vp9")
    assert [r["size"] for r in cache] == ["96x72", "96x80", "96x72"]
    assert all(r["indices_match"] and r["grey_levels_to_pyav"] < 2.0 for r in cache), cache
    assert not any(r["guard_sends_to_pyav"] for r in cache)
    # The seek timings, on a short video: exact frames from the whole file and from the cut one.
    seek_video = dict(num_frames=40, fps=10, height=48, width=64, gop=10)
    monkeypatch.setattr(nvdec_diagnose, "SEEK_VIDEO", seek_video)
    monkeypatch.setattr(nvdec_diagnose, "SEEK_FRAMES", (0, 39))
    monkeypatch.setattr(nvdec_diagnose, "SEEK_REPEATS", 1)
    seek = nvdec_diagnose.seek_checks(tmp_path, "cpu", "vp9")
    assert [r["frame"] for r in seek] == [0, 39]
    assert all(r["full_match"] and r["trim_match"] and r["full_ms"] > 0 < r["trim_ms"] for r in seek), seek
    # The pack check: one-frame cuts as separate samples and as one pack, both exact.
    monkeypatch.setattr(nvdec_diagnose, "PACK_ROWS", 3)
    (pack,) = nvdec_diagnose.pack_checks(tmp_path, "cpu", "vp9")
    assert pack["frames"] == [0, 20, 39] and pack["single_match"] and pack["pack_match"], pack
    assert pack["single_ms_per_frame"] > 0 < pack["pack_ms_per_frame"]


def test_bench_data_runs_dali_loaders_in_several_processes(tmp_path):
    # Each process: its own DALI pipeline on a shard of the samples, clocks started at a barrier.
    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed")
    import bench_data

    out = tmp_path / "data.json"
    argv = "--device cpu --num-videos 2 --seconds 2 --fps 10 --batches 2 --batch-size 2 --size 64"
    bench_data.main(
        argv.split() + ["--dali-processes", "2", "--only", "dali-cpu vp9 processes", "--out", str(out)]
    )
    (row,) = json.loads(out.read_text())["results"]
    assert "error" not in row, row
    assert row["variant"] == "dali-cpu vp9 processes=2 trim=on affine=off" and row["processes"] == 2
    # each process times 2 batches of its shard (a shard's batches may be short): whole samples of 4 x 2
    assert row["frames"] >= 2 * 2 * 4 * 2 and row["frames"] % (4 * 2) == 0 and row["frames_per_s"] > 0


def test_bench_data_keeps_finished_rows_when_stopped(tmp_path, monkeypatch):
    # The GPU script's time limit may stop the benchmark mid-way: the JSON holds every finished row.
    import bench_data

    calls = []

    def measure(args, root, overrides):
        calls.append(overrides["backend"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands in for the step's timeout
        return {"frames_per_s": 1.0, "frames": 1, "seconds": 1.0}

    monkeypatch.setattr(bench_data, "measure", measure)
    out = tmp_path / "data.json"
    argv = "--device cpu --num-videos 1 --seconds 1 --fps 4 --batches 1 --batch-size 1 --size 32 --workers 0"
    with pytest.raises(KeyboardInterrupt):
        bench_data.main(argv.split() + ["--only", "pyav", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [r["variant"] for r in rows] == ["pyav h264 gop30 workers=0"] and rows[0]["frames_per_s"] == 1.0


def test_bench_data_packs_cut_videos_only(tmp_path):
    # --dali-pack applies to cut videos; uncut videos are never packed, and a bad value names the flag.
    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed")
    import bench_data

    out = tmp_path / "data.json"
    argv = "--device cpu --num-videos 2 --seconds 2 --fps 10 --batches 2 --batch-size 2 --size 64 --workers 0"
    extra = ["--dali-pipelines", "1", "--dali-trim", "on,off", "--dali-pack", "1,2"]
    bench_data.main(argv.split() + extra + ["--only", "dali-cpu vp9 pipelines", "--out", str(out)])
    rows = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {
        "dali-cpu vp9 pipelines=1 trim=on",
        "dali-cpu vp9 pipelines=1 trim=on pack=2",
        "dali-cpu vp9 pipelines=1 trim=off",
    }
    for row in rows.values():
        assert "error" not in row, row
        assert row["frames"] == 32 and row["dali_pack"] == (2 if "pack=2" in row["variant"] else 1)
    with pytest.raises(SystemExit, match="--dali-pack: each value must be an integer >= 1, got '0'"):
        bench_data.main(argv.split() + ["--dali-pack", "0", "--out", str(out)])


def test_bench_data_names_every_cut_and_pack_variant(tmp_path):
    # Names are what DATA_ONLY selects by prefix: an uncut row ends in "trim=off", a packed one in "pack=k".
    import argparse

    import bench_data

    args = argparse.Namespace(
        device="cuda",
        workers="16",
        dali_pipelines="1",
        dali_threads=8,
        dali_affine="off",
        dali_trim="on,off",
        dali_pack="1,8",
        dali_processes="4",
        gop=30,
    )
    sets = {"h264": tmp_path, "h264_gop4": tmp_path, "vp9": tmp_path}
    names = [
        name
        for name, _ in bench_data.variants(args, sets, tmp_path)
        if name.startswith(("dali-gpu h264 processes", "dali-gpu h264 gop4"))
    ]
    assert names == [
        "dali-gpu h264 processes=4 trim=on affine=off",
        "dali-gpu h264 processes=4 trim=on affine=off pack=8",
        "dali-gpu h264 processes=4 trim=off affine=off",
        "dali-gpu h264 gop4 pipelines=1 trim=on",
        "dali-gpu h264 gop4 pipelines=1 trim=on pack=8",
        "dali-gpu h264 gop4 pipelines=1 trim=off",
    ]
