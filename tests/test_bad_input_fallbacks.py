"""Training through DALI on a CPU: files PyAV decoded instead of DALI are PyAV fallbacks, not bad input.

DALI's CPU decoder cannot read H.264, so every video of an H.264 set goes to PyAV (dali_pipelines/routing.py)
and was warned about, summarized and written to bad_inputs.jsonl as bad input, although every sample was
decoded and trained on: a clean set looked corrupt, and its real bad files were lost among the rest."""

import json
import logging

import pytest
import torch

pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed")

from clipbert.data.bad_input import DROPPED, TRYING_PYAV, USED_PYAV, BadInputTracker  # noqa: E402
from clipbert.data.painted import write_painted_video, zero_payloads  # noqa: E402
from clipbert.train import config as C  # noqa: E402
from clipbert.train import loop  # noqa: E402
from clipbert.train.logging import get_logger  # noqa: E402
from clipbert.train.run import run  # noqa: E402

CPU = torch.device("cpu")
ROUTED = "codec h264 unreadable by DALI on CPU"  # routing.py's reason for an H.264 file on the CPU
# 8 training videos, batch 2: 4 steps an epoch
TRAIN = {"epochs": 2, "batch_size": 2, "save_every": 1, "eval_every": -1}

pytestmark = pytest.mark.usefixtures("cpu_world")


def _config(data_dir, out, **train):
    raw = {
        "task": {"name": "msrvtt_ret"},
        "model": {"preset": "tiny", "backbone_layers": [1, 1, 1, 1], "num_layers": 1},
        "data": {
            "ann_dir": f"{data_dir}/annotations",
            "video_dir": f"{data_dir}/videos",
            "backend": "dali",
            "image_size": 64,
            "num_clips": 1,
            "frames_per_clip": 1,
            "num_test_clips": 1,
            "num_workers": 0,
        },
        "train": {
            "output_dir": str(out),
            "device": "cpu",
            "progress_bar": False,
            "tensorboard": False,
            "plot": False,
            **TRAIN,
            **train,
        },
        "eval": {"final_eval": False},
        "deepspeed": {"zero_optimization": {"stage": 0}},
    }
    return C.from_dict(raw)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def _run_logged(cfg) -> list[logging.LogRecord]:
    """Train; the trainer's log records (it does not propagate to the root logger)."""
    handler, logger = _Records(), get_logger()  # set up first: a logger with a handler is left as it is
    logger.addHandler(handler)
    try:
        run(cfg, CPU)
    finally:
        logger.removeHandler(handler)
    return handler.records


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "bad_inputs.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def h264_set(tmp_path_factory):
    """The synthetic set (H.264) with one training video made an MJPEG file neither DALI nor PyAV decodes (it
    probes and cuts); returns (root, the H.264 training files, the bad file)."""
    from clipbert.data import synthetic

    root = tmp_path_factory.mktemp("h264_set")
    synthetic.generate(root, 12, 0, size="tiny", workers=1)
    # one caption per video: an epoch is one item per caption, and one a video keeps the runs at 4 steps
    path = root / "annotations" / "msrvtt_ret_train.jsonl"
    rows = {}
    for line in path.read_text().splitlines():
        rows.setdefault(json.loads(line)["clip_name"], line + "\n")
    path.write_text("".join(rows.values()))
    train = sorted(rows)
    videos = root / "videos"
    (videos / f"{train[0]}.mp4").unlink()
    bad = write_painted_video(videos / train[0], 20, codec="mjpeg")
    zero_payloads(bad, first=3)
    return root, [str(videos / f"{name}.mp4") for name in train[1:]], bad


@pytest.fixture(scope="module")
def full(h264_set, tmp_path_factory):
    """The uninterrupted 2-epoch run: its output dir and log records."""
    out = tmp_path_factory.mktemp("full") / "run"
    return out, _run_logged(_config(h264_set[0], out))


def test_h264_files_through_dali_on_cpu_are_pyav_fallbacks_not_bad_input(h264_set, full):
    _, h264, bad = h264_set
    out, records = full
    first, second = _records(out)
    # The files PyAV decoded, with why DALI did not, apart from the one bad file (dropped from its batch).
    # The loader reports a fallback once per process: each is named by the epoch that first met it.
    assert not first["pyav_fallback_files"].keys() & second["pyav_fallback_files"].keys()
    assert {**first["pyav_fallback_files"], **second["pyav_fallback_files"]} == {
        path: ROUTED for path in h264
    }
    for epoch, record in enumerate((first, second)):
        assert (record["epoch"], record["bad_files"], list(record["files"])) == (epoch, 1, [bad])
        assert record["hits"] == record["files"][bad] >= 1
        assert record["pyav_fallbacks"] == len(record["pyav_fallback_files"])
    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert [m for m in warnings if m.startswith("bad input")] == [
        f"bad input {bad}: {_pyav_reason(warnings)}"
    ]
    assert not any(path in m for m in warnings for path in h264)  # no H.264 file is said to be bad
    infos = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert sorted(m for m in infos if "decoded by PyAV instead of DALI" in m) == [
        f"{path}: {ROUTED}; decoded by PyAV instead of DALI" for path in h264
    ]
    said = f"epoch 0: {first['pyav_fallbacks']} video file(s) DALI could not decode were decoded by PyAV"
    assert sum(said in m for m in infos) == 1
    assert sum(f"epoch 0: 1 bad file(s), met {first['hits']} time(s): {bad}" in m for m in warnings) == 1


def _pyav_reason(warnings: list[str]) -> str:
    """The bad file's warning's reason: PyAV's, as the loader reported the dropped sample."""
    (line,) = [m for m in warnings if m.startswith("bad input")]
    reason = line.split(": ", 1)[1]
    assert reason.endswith(f"; {DROPPED}") and "replaced" not in reason
    return reason


def test_a_mid_epoch_stop_and_resume_reports_as_the_uninterrupted_run(h264_set, full, tmp_path):
    # The resumed DALI loader routes and reports again every H.264 file it meets: without the checkpoint's
    # record they were named again, as new fallbacks, in epoch 1's summary (and the log).
    root, h264, _ = h264_set
    out = tmp_path / "run"
    run(_config(root, out, stop_after_steps=6), CPU)  # 2 of epoch 1's 4 steps
    assert len(_records(out)) == 1
    records = _run_logged(_config(root, out, resume="auto"))
    assert _records(out) == _records(full[0])
    # no file an earlier epoch named is said again to be decoded by PyAV
    again = [r.args[0] for r in records if r.getMessage().endswith("decoded by PyAV instead of DALI")]
    assert set(again) <= _records(out)[1]["pyav_fallback_files"].keys()


def _entry(path: str, reason: str, end: str) -> str:
    return f"{path}: {reason}; {end}"  # as dali_pipelines/loader.py writes them


def test_fallbacks_of_every_rank_are_gathered_and_a_dropped_one_is_bad(tmp_path, monkeypatch, caplog):
    # Rank 0 decoded a.mp4 and b.mp4 with PyAV; rank 1 met a.mp4 too, where PyAV failed on it: a bad file,
    # not a fallback, in the epoch's one summary; b.mp4 and rank 1's c.mp4 are fallbacks.
    tracker = BadInputTracker()
    with caplog.at_level(logging.INFO, logger="clipbert.data.bad_input"):
        tracker.update(
            {"bad_videos": [_entry("a.mp4", ROUTED, USED_PYAV), _entry("b.mp4", ROUTED, USED_PYAV)]}
        )
        tracker.update({"bad_videos": [_entry("b.mp4", "DALI could not decode (x)", TRYING_PYAV)]})
    assert caplog.messages == [f"{n}: {ROUTED}; decoded by PyAV instead of DALI" for n in ("a.mp4", "b.mp4")]
    rank1 = iter([{"a.mp4": 2}, {"a.mp4": ROUTED, "c.mp4": "DALI could not decode (y)"}])  # bad, then PyAV
    monkeypatch.setattr(loop, "all_gather_objects", lambda mine: [mine, next(rank1)])
    trainer = type("T", (), {})()
    trainer.tracker, trainer.state, trainer.out = tracker, type("S", (), {"epoch": 1, "step": 3})(), tmp_path
    loop.Trainer._bad_input_summary(trainer)
    (record,) = _records(tmp_path)
    assert (record["bad_files"], record["hits"], record["files"]) == (1, 2, {"a.mp4": 2})
    assert record["pyav_fallback_files"] == {"b.mp4": ROUTED, "c.mp4": "DALI could not decode (y)"}
    assert record["pyav_fallbacks"] == 2


def test_a_file_routed_and_dropped_in_one_batch_is_only_bad(caplog):
    # the loader routes the file (submit) and PyAV fails on it (finish) before the batch is handed out
    tracker = BadInputTracker()
    with caplog.at_level(logging.INFO, logger="clipbert.data.bad_input"):
        tracker.update({"bad_videos": [_entry("a.mp4", ROUTED, USED_PYAV), _entry("a.mp4", "cut", DROPPED)]})
    assert caplog.messages == ["bad input a.mp4: cut; sample dropped"]  # not said to be decoded by PyAV
    result = tracker.summary(0)
    assert result["files"] == {"a.mp4": 1} and "pyav_fallbacks" not in result


def test_eval_counts_a_file_pyav_decoded_after_dali_failed_as_scored_not_bad(capfd):
    # "trying PyAV" (DALI failed on the file mid-batch, PyAV then decoded it) was reported as a bad file
    # "scored with a replacement", though its example was scored as any other; a later drop is bad
    from clipbert.train.evaluate import _report_bad_videos

    entries = [f"a.mp4: DALI could not decode (x); {TRYING_PYAV}", f"b.mp4: unsupported codec; {USED_PYAV}"]
    get_logger()  # the trainer's handlers: its messages go to stderr
    assert _report_bad_videos(entries, "val") == 0
    assert "2 video file(s) DALI could not decode were decoded by PyAV" in capfd.readouterr().err
    assert _report_bad_videos([*entries, f"a.mp4: broken; {DROPPED}"], "val") == 1
