"""Review of session 30's changes (the output-dir lock, write failures, frame-store locks): regressions where
a change reached shared code or a path its own tests did not run."""

import errno
import os

import pytest

from clipbert.train import output_lock
from clipbert.train.output_lock import LOCK_NAME, exclusive_output_dir

pytestmark = pytest.mark.usefixtures("cpu_world")


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_at_the_lock_neither_stops_the_run_nor_leaves_the_dir_locked(tmp_path):
    # The holder's line failed to write (a new .run.lock needs a block): the OSError left the descriptor open
    # and the file locked, so the next run of the process was refused as "in use by another training run".
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(output_lock.os, "write", _full_disk)
        with exclusive_output_dir(tmp_path):
            assert (tmp_path / LOCK_NAME).is_file()  # held, its holder unsaid
    with exclusive_output_dir(tmp_path):  # space freed: the same process runs again
        assert f"pid {os.getpid()} " in (tmp_path / LOCK_NAME).read_text()


def test_the_demo_does_not_move_away_a_stale_dir_that_a_run_still_holds(tmp_path):
    # A second `make demo` with other --set values moved the first one's running stage to <dir>.previous: that
    # run went on writing by its paths into the new run's dir, mixing the two runs' logs and checkpoints.
    from test_train_fakes import make_config

    from clipbert.demo import set_aside_if_changed
    from clipbert.train.config import ConfigError

    out = tmp_path / "visual_words"
    out.mkdir()
    (out / "config.json").write_text('{"another": "config"}')
    cfg = make_config(out)
    with exclusive_output_dir(out):
        with pytest.raises(ConfigError, match=f"{out} holds a run of another config, and that run is still"):
            set_aside_if_changed(cfg, {"benchmark": "0"})
        assert (out / "config.json").is_file() and not (tmp_path / "visual_words.previous").exists()
    set_aside_if_changed(cfg, {"benchmark": "0"})  # once it has ended, it is set aside as before
    assert (tmp_path / "visual_words.previous" / "config.json").is_file()


def test_the_demo_exits_4_on_a_full_disk_while_generating_its_benchmark(tmp_path, monkeypatch, capsys):
    # docs/TRAINING.md: the demo exits 4 when a write failed; a full disk while it generated the benchmark
    # (or wrote its own files) was a traceback, as only the trainer's WriteError was caught.
    from clipbert import demo

    def full_disk(data_dir, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(data_dir / "videos" / "v0.mp4"))

    monkeypatch.setattr(demo, "ensure_benchmark", full_disk)
    assert demo.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")]) == 4
    said = capsys.readouterr().err
    assert "No space left on device" in said and str(tmp_path / "data" / "videos" / "v0.mp4") in said


def test_train_py_help_lists_exit_code_4():
    # run.main exits 4 on a failed write (docs/TRAINING.md), but --help listed 0, 2, 3 and 130 only.
    from clipbert.train.cli import EPILOG

    assert "4 a write failed" in EPILOG


def test_a_store_rewrite_on_a_still_full_disk_says_how_much_room_it_needs(tmp_path, monkeypatch):
    # The rerun after a full disk copies the store's complete entries to a new file: with a little space freed
    # it failed again saying only "No space left on device", though the copy needs about the store's size.
    import h5py

    from clipbert.data import build_frame_store as bfs
    from clipbert.data.painted import write_painted_video

    videos, out = tmp_path / "videos", tmp_path / "frames.h5"
    videos.mkdir()
    write_painted_video(videos / "v0", 4, fps=10, codec="mjpeg")
    with h5py.File(out, "w") as h5:
        h5.create_group("videos")
    real = bfs.open_h5

    def full_disk_for_the_copy(path, mode):
        if str(path).endswith(".rewrite"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, mode)

    monkeypatch.setattr(bfs, "_unreadable_entries", lambda h5: ["v9"])  # as a failed write leaves one
    monkeypatch.setattr(bfs, "open_h5", full_disk_for_the_copy)
    with pytest.raises(bfs.StoreWriteError, match=r"No space left on device.*needs up to \d+\.\d GiB free"):
        bfs.build_frame_store(videos, out, fps=2.0, workers=0, progress=False)
    assert not (tmp_path / "frames.h5.rewrite").exists()
