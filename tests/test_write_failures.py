"""A full disk or a failing write (ENOSPC, EIO): the run stops with one message naming the file and the OS
error, the last complete checkpoint stays the one `latest` names, and train.resume=auto goes on from it
exactly as the uninterrupted run did; a frame store build resumes."""

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_fakes import fake_factory, make_config

from clipbert.train import checkpoint as ckpt
from clipbert.train.run import run

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("cpu_world")

# 8 examples, batch 2, accumulation 2 -> 2 optimizer steps an epoch; 2 epochs -> 4 steps, a checkpoint each
TRAIN = {"epochs": 2, "grad_accum": 2, "save_every": 1, "keep_checkpoints": 3, "eval_every": -1}
NO_FINAL_EVAL = {"final_eval": False}
STEP3 = ckpt.tag_for(3)


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "steps.jsonl").read_text().splitlines()]


def _run(out, **train):
    return run(make_config(out, train={**TRAIN, **train}, eval=NO_FINAL_EVAL), CPU, fake_factory())


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    assert _run(out)["step"] == 4
    return out


def _copy(src, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(src, out)
    return out


def _fail_torch_save(monkeypatch, name, error):
    """torch.save (the RNG file's and DeepSpeed's) of step 3's `name` writes half its bytes, then fails."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        real(obj, f, *args, **kwargs)
        if STEP3 in str(f) and str(f).endswith(name):
            path = Path(f)
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            raise error
        return None

    monkeypatch.setattr(torch, "save", save)


def _fail_state_file(monkeypatch):
    real = ckpt.Path.write_text

    def write_text(self, text, *args, **kwargs):
        if self.name == ckpt.STATE_FILE and STEP3 in str(self):
            real(self, text[: len(text) // 2])
            _full_disk()
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(ckpt.Path, "write_text", write_text)


def _fail_latest(monkeypatch):
    """Writing step 3's name into `latest.tmp` gets half of it out, then fails (EIO)."""
    import builtins

    class Failing:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            if text == STEP3:
                self.f.write(text[:3])
                raise OSError(errno.EIO, "Input/output error")
            return self.f.write(text)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def fake_open(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 - closed by its caller
        return Failing(f) if Path(path).name == "latest.tmp" else f

    monkeypatch.setattr(ckpt, "open", fake_open, raising=False)


# torch.save on a full disk raises this RuntimeError, which names neither the file nor the disk
TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
STAGES = {
    "rng file": (
        lambda mp: _fail_torch_save(mp, "rng_rank0.pt", OSError(errno.ENOSPC, "No space left on device")),
        f"checkpoint .*{STEP3}: No space left on device",
    ),
    "trainer state": (_fail_state_file, f"checkpoint .*{STEP3}: No space left on device"),
    "deepspeed files": (
        lambda mp: _fail_torch_save(mp, "model_states.pt", TORCH_FULL),
        f"checkpoint .*{STEP3}: .*unexpected pos .*free on its file system",
    ),
    "latest": (_fail_latest, f"latest \\(naming {STEP3}\\): Input/output error"),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_failed_checkpoint_write_names_it_and_resume_auto_goes_on_from_the_last_complete_one(
    full, tmp_path, monkeypatch, stage
):
    # It ended in a traceback: torch.save's "unexpected pos" or a bare "[Errno 28]", naming no file.
    from clipbert.train.logging import WriteError

    out = tmp_path / "run"
    fail, message = STAGES[stage]
    with monkeypatch.context() as mp:
        fail(mp)
        with pytest.raises(
            WriteError,
            match=f"cannot write .*{message}.*last complete checkpoint, {ckpt.tag_for(2)}, is untouched",
        ):
            _run(out)
    assert (ckpt.checkpoint_root(out) / ckpt.LATEST).read_text() == ckpt.tag_for(2)
    assert _run(out, resume="auto")["step"] == 4
    assert _losses(out) == _losses(full)


class _FullFile:
    """A file opened for appending on a full disk: open succeeds, write fails without naming the file."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, text):
        _full_disk()


def _fail_appends(monkeypatch, module, name, lines):
    """`module`'s open(<name>, "a") fails to write once the file holds `lines` lines."""
    import builtins
    from pathlib import Path

    def fake_open(path, mode="r", *args, **kwargs):
        path_ = Path(path)
        if (
            path_.name == name
            and "a" in mode
            and path_.is_file()
            and len(path_.read_text().splitlines()) >= lines
        ):
            return _FullFile()
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(module, "open", fake_open, raising=False)


LOGS = {
    "steps.jsonl": ("clipbert.train.loop", {}, {}),
    "metrics.jsonl": ("clipbert.train.logging", {"eval_every": 1}, {}),
    "bad_inputs.jsonl": ("clipbert.train.loop", {}, {"bad_indices": (1,)}),
}


@pytest.mark.parametrize("name", list(LOGS))
def test_a_log_that_cannot_be_written_stops_the_run_naming_it(tmp_path, monkeypatch, name):
    # The run stopped with a bare "[Errno 28] No space left on device" traceback that named no file.
    import importlib

    from clipbert.train.logging import WriteError

    module, train, fault = LOGS[name]
    _fail_appends(monkeypatch, importlib.import_module(module), name, 0 if name == "bad_inputs.jsonl" else 2)
    cfg = make_config(tmp_path, train={**TRAIN, **train}, eval=NO_FINAL_EVAL)
    with pytest.raises(
        WriteError, match=f"cannot write {tmp_path / name}: No space left on device \\(.* free"
    ):
        run(cfg, CPU, fake_factory(**fault))


@pytest.mark.parametrize(
    "error",
    [
        OSError(
            errno.ENOSPC, "No space left on device"
        ),  # a bare write failure, from code that does not wrap it
        "WriteError",
    ],
)
def test_train_py_exits_4_with_one_line_on_a_failed_write(monkeypatch, capfd, error):
    # It exited 1 with a page of traceback.
    from clipbert.train import run as R
    from clipbert.train.logging import WriteError

    if error == "WriteError":
        error = WriteError(
            "cannot write out/steps.jsonl: No space left on device (0 MiB free on its file system)"
        )

    def full_disk(cfg, device):
        raise error

    monkeypatch.setattr(R, "run", full_disk)
    for name in ("init_distributed", "close_distributed"):  # the module's process group stays
        monkeypatch.setattr(R, name, lambda *args: None)
    assert R.main(["--config", "ds_synthetic"]) == R.WRITE_FAILED == 4
    err = capfd.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    assert "then rerun: with --set train.resume=auto a training run continues" in err


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # TensorBoard's thread
def test_tensorboard_that_cannot_write_names_its_folder(tmp_path, monkeypatch):
    # TensorBoard's writer thread failed, and its bare OSError surfaced at a later call, naming nothing.
    from tensorboard.summary.writer import record_writer

    from clipbert.train.logging import WriteError

    monkeypatch.setattr(record_writer.RecordWriter, "write", lambda self, data: _full_disk())
    cfg = make_config(tmp_path, train={**TRAIN, "tensorboard": True}, eval=NO_FINAL_EVAL)
    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'tensorboard'}: No space left on device"):
        run(cfg, CPU, fake_factory())


def test_a_failed_export_leaves_the_model_dir_as_it_was(full, tmp_path, monkeypatch):
    # model/ was written in place: a full disk left it with a config and cut-short weights, or weights of
    # one export and predict.json of another.
    import safetensors.torch

    from clipbert.train.logging import WriteError

    out = _copy(full, tmp_path)
    before = {p.name: p.read_bytes() for p in (out / "model").iterdir()}
    real = safetensors.torch.save_file

    def save_file(tensors, filename, *args, **kwargs):
        real(tensors, filename, *args, **kwargs)
        with open(filename, "r+b") as f:
            f.truncate(100)
        _full_disk()

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    with pytest.raises(
        WriteError, match=f"cannot write {out / 'model'} .*No space left on device.* left as it"
    ):
        _run(out, resume="auto")  # the finished run exports its model again
    assert {p.name: p.read_bytes() for p in (out / "model").iterdir()} == before


_FULL_BUILD = """
import resource, signal, sys
from clipbert.data import build_frame_store as bfs
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails (EFBIG), as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (60000, 60000))
sys.exit(bfs.main(["--videos", sys.argv[1], "--out", sys.argv[2], "--fps", "5", "--workers", "0"]))
"""


def test_a_frame_store_build_that_ran_out_of_space_resumes(tmp_path):
    # The failed write left an entry whose link HDF5 had written but not its group: no call can delete or
    # rewrite it, and the rerun that should resume stopped with "Unable to synchronously create group (name
    # already exists)", so the hours of build before it could only be thrown away.
    import subprocess
    import sys

    import h5py

    from clipbert.data import build_frame_store as bfs
    from clipbert.data.frame_store import FrameStore
    from clipbert.data.painted import write_painted_video

    videos, out = tmp_path / "videos", tmp_path / "frames.h5"
    videos.mkdir()
    for name in "abcd":
        write_painted_video(videos / name, 40, fps=10, height=96, width=128)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    failed = subprocess.run(
        [sys.executable, "-c", _FULL_BUILD, str(videos), str(out)], env=env, capture_output=True
    )
    assert failed.returncode != 0  # 4 with the message, or HDF5's own crash in its flush
    with h5py.File(out, "r") as h5:  # the case: an entry a failed write left unreadable
        assert [key for key in h5["videos"] if h5["videos"].get(key) is None]
    result = bfs.build_frame_store(videos, out, fps=5.0, workers=0, progress=False)
    assert sorted(result["written"] + result["skipped"]) == list("abcd")
    store = FrameStore(out)
    assert sorted(store.video_ids()) == list("abcd")
    assert all(len(store.read_frames(v, np.arange(3))) == 3 for v in "abcd")


def test_a_synthetic_generation_cut_by_a_full_disk_says_so_and_a_rerun_recovers(
    tmp_path, monkeypatch, capsys
):
    # pins what already held: one line naming --out, exit 2, no meta.json until a rerun finishes it
    from clipbert.data.synthetic import annotations
    from clipbert.data.synthetic.__main__ import main
    from clipbert.data.synthetic.generate import not_ready_reason

    argv = ["--out", str(tmp_path), "--num-videos", "3", "--size", "tiny", "--workers", "1"]
    with monkeypatch.context() as mp:
        mp.setattr(annotations, "write_all", _full_disk)
        with pytest.raises(SystemExit) as stopped:
            main(argv)
    assert stopped.value.code == 2
    assert (
        f"cannot write the benchmark to --out {tmp_path}: [Errno 28] No space left" in capsys.readouterr().err
    )
    assert "meta.json is missing" in not_ready_reason(tmp_path)
    main(argv)
    assert not_ready_reason(tmp_path, 3, size="tiny") is None


def test_a_model_dir_swap_cut_short_before_does_not_stop_the_next_export(tmp_path):
    # A stop while the previous export's old copy was being removed left model.old/, and every later export
    # failed renaming model/ onto it ("Directory not empty").
    from clipbert.train import best

    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "weights").write_text("2")
    (tmp_path / "model.old").mkdir()
    (tmp_path / "model.old" / "weights").write_text("1")

    def write(staging):
        staging.mkdir()
        (staging / "weights").write_text("3")

    best.replace_dir(write, directory)
    assert (directory / "weights").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
