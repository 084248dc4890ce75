"""One training run at a time per train.output_dir. Why: the same job submitted twice (or a requeued job
started while its first instance still ran) wrote two runs' checkpoints, `latest` and logs into one folder,
and the resume then loaded either run's state."""

import errno
import multiprocessing as mp
import os
from pathlib import Path

import pytest
import torch
from test_train_fakes import fake_factory, make_config

from clipbert.train import output_lock
from clipbert.train.config import ConfigError
from clipbert.train.output_lock import LOCK_NAME, exclusive_output_dir
from clipbert.train.run import run

pytestmark = pytest.mark.usefixtures("cpu_world")
CPU = torch.device("cpu")


def test_a_second_run_into_a_held_output_dir_stops_at_its_start_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    with exclusive_output_dir(out), pytest.raises(ConfigError) as err:
        run(make_config(out, train={"epochs": 1}), CPU, fake_factory(train_size=4, eval_size=2))
    said = str(err.value)
    assert f"train.output_dir={str(out)!r} is in use by another training run" in said
    assert f"pid {os.getpid()} on " in said and LOCK_NAME in said
    assert not out.exists()  # the lock's folder, removed as the run that made it ended with nothing in it


def _lock_seen_by_another(cfg, model_cfg, device):
    """A data factory that tries the lock as a second run would, while the run builds its data."""
    _seen.append(output_lock._take(Path(cfg.train.output_dir))[1])
    return fake_factory(train_size=4, eval_size=2)(cfg, model_cfg, device)


_seen: list = []


def test_the_lock_is_held_through_the_run_and_gone_after_it(tmp_path):
    out = tmp_path / "run"
    _seen.clear()
    run(make_config(out, train={"epochs": 1}), CPU, _lock_seen_by_another)
    assert _seen and "is in use by another training run" in _seen[0]
    assert not (out / LOCK_NAME).exists() and (out / "steps.jsonl").is_file()
    # continuing it takes the (released) lock again
    run(make_config(out, train={"epochs": 2, "resume": "auto"}), CPU, fake_factory(train_size=4, eval_size=2))


def test_a_lock_file_left_by_a_killed_run_does_not_stop_the_next(tmp_path):
    (tmp_path / LOCK_NAME).write_text("pid 1 on a-node-that-died, started 2026-01-01 00:00:00\n")
    with exclusive_output_dir(tmp_path):  # flock died with its holder: only the file is left
        assert "pid 1 " not in (tmp_path / LOCK_NAME).read_text()


def _sleep(seconds):
    import time

    time.sleep(seconds)


def test_forked_workers_do_not_keep_the_lock_after_the_run(tmp_path):
    """DataLoader workers forked during the run share the locked file: its release must not wait for them."""
    with exclusive_output_dir(tmp_path):
        worker = mp.get_context("fork").Process(target=_sleep, args=(30,))
        worker.start()
    try:
        with exclusive_output_dir(tmp_path):
            pass
    finally:
        worker.kill()
        worker.join()


def test_a_filesystem_without_locks_warns_and_runs(tmp_path, monkeypatch, train_log):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(output_lock.fcntl, "flock", no_locks)
    out = tmp_path / "run"
    with exclusive_output_dir(out):
        pass
    [said] = [r.getMessage() for r in train_log.records if "cannot be locked" in r.getMessage()]
    assert str(out) in said and "would not be stopped" in said
    assert not out.exists()  # no lock file left, nor the folder made for it


def test_an_io_error_at_the_lock_stops_the_run_with_one_message(tmp_path, monkeypatch):
    def failing(fd, op):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(output_lock.fcntl, "flock", failing)
    locking = exclusive_output_dir(tmp_path)
    with pytest.raises(ConfigError, match=r"cannot lock \.run\.lock \(Input/output error\)"), locking:
        pass
