"""One rank-aware logger for the trainer: rank 0 logs, the others stay quiet; `warn_once` per message.

`RunLog` writes what a run records on disk: TensorBoard scalars and <output_dir>/metrics.jsonl (one JSON
object per evaluation, with the step and every metric), and rewinds both, with the trainer's steps.jsonl, when
a run resumes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

_LOGGER_NAME = "clipbert.train"
# with the date: a training run lasts days, and a log line of 03:12:40 alone could be any of them
LOG_FORMAT = "%(asctime)s [%(levelname)s] %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"
_warned: set[str] = set()


def rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def is_rank0() -> bool:
    return rank() == 0


class _RankFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return is_rank0() or record.levelno >= logging.ERROR  # errors from any rank must be seen


class _StderrHandler(logging.StreamHandler):
    """Writes each record to sys.stderr as it is then, not as it was when the logger was made: a notebook's
    or a test runner's replaced stderr may be closed by the time a later run logs, and every message then
    became a "--- Logging error ---" traceback instead of the message."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns one: always sys.stderr instead
        pass


def _rank_handler() -> logging.Handler:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATEFMT))
    handler.addFilter(_RankFilter())
    return handler


def get_logger() -> logging.Logger:
    logger = logging.getLogger(_LOGGER_NAME)
    if not logger.handlers:
        logger.addHandler(_rank_handler())
        logger.setLevel(logging.INFO)
        logger.propagate = False
        _cover_package_loggers()
    return logger


def _cover_package_loggers() -> None:
    """The same handler for the package's other loggers (clipbert.data.*, clipbert.models.*), unless the
    program configured logging itself. Why: with no handler their warnings (a text cut, no ITM negatives)
    reached Python's last-resort handler: once from every rank, with no time or level. Their level stays
    the root's (WARNING), and they still propagate to the root (where pytest's caplog listens)."""
    package = logging.getLogger(_LOGGER_NAME.partition(".")[0])
    if not package.handlers and not logging.getLogger().handlers:
        package.addHandler(_rank_handler())


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        get_logger().warning(message)


class WriteError(OSError):
    """A file of the run that could not be written (a full disk, a quota, an I/O error of a network file
    system): run.main ends the run with this one message, which names the file, and exit code 4."""


# what a write fails with when the disk is full or fails (errno), and the RuntimeError torch.save gives then
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}
_TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed", "file write failed", "unexpected pos")


@contextlib.contextmanager
def writing(path: str | Path, what: str = "", then: str = ""):
    """Turn a failed write under this block into a WriteError naming `path` and the OS error.

    Why: a write() or flush() that fails says "[Errno 28] No space left on device" without the file, and
    torch.save (DeepSpeed's checkpoint files) says only "[enforce fail at inline_container.cc] unexpected
    pos", so a run on a full disk ended in a page of traceback that named neither the file nor the cause."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        raise WriteError(f"cannot write {what or path}: {_os_error(err, path)}{then}") from err
    except RuntimeError as err:
        if not any(text in str(err) for text in _TORCH_WRITE_FAILURES):
            raise
        raise WriteError(f"cannot write {what or path}: {err} ({_free_space(path)}){then}") from err


def is_write_failure(err: OSError) -> bool:
    """A write that failed (train.py's and the demo's exit 4), not an OSError to show with its traceback."""
    return isinstance(err, WriteError) or err.errno in WRITE_ERRNOS


def _os_error(err: OSError, path: str | Path) -> str:
    reason = err.strerror or str(err)
    if err.filename is not None and str(err.filename) != str(path):
        reason += f" ({err.filename})"
    return f"{reason} ({_free_space(path)})" if err.errno in (errno.ENOSPC, errno.EDQUOT) else reason


def _free_space(path: str | Path) -> str:
    """How much room is left where `path` is (a torch.save failure does not say it was the disk)."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        return f"{shutil.disk_usage(where).free / 2**20:.0f} MiB free on its file system"
    except OSError:
        return "free space unknown"


def _jsonable(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Inf
    return value


def _step_of(line: str) -> float:
    """The step of a JSON line: -inf for none (an eval.only record of an exported model, kept), +inf for a
    line that is not JSON (cut short by a crash, dropped)."""
    try:
        step = json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf
    return -math.inf if step is None else step


def replace_text(path: Path, text: str) -> None:
    """Write `text` under a temporary name, then rename it over `path`. Why: a rewrite in place truncates the
    file first, so a run killed during a resume's rewind (a preemption) lost every line of the log."""
    partial = path.with_name(path.name + ".partial")
    with writing(path):
        partial.write_text(text)
        os.replace(partial, path)


def _line_break_if_cut(path: Path) -> str:
    """A line break when `path` ends in a line cut short (by a crashed run, or an eval.only run into this
    output_dir killed mid-write), else "". Why: the next record appended to the cut line made one line that is
    no JSON, so that evaluation was lost from the plot and dropped by the next resume's rewind."""
    if not path.is_file() or path.stat().st_size == 0:
        return ""
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return "" if f.read(1) == b"\n" else "\n"


class RunLog:
    """TensorBoard scalars (rank 0, optional) and the metrics.jsonl evaluation record."""

    def __init__(self, output_dir: str | Path, tensorboard: bool = True):
        self.dir = Path(output_dir)
        self.enabled = is_rank0()
        self.tb = None
        if self.enabled:
            self.dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    with writing(self.dir / "tensorboard"):
                        self.tb = SummaryWriter(str(self.dir / "tensorboard"))
                except ImportError:
                    warn_once("tensorboard is not installed; no TensorBoard scalars will be written")

    def rewind(self, step: int) -> None:
        """A resumed run goes on from `step`: drop what the interrupted run logged after it (steps.jsonl,
        metrics.jsonl, bad_inputs.jsonl, TensorBoard events), which the resumed run logs again. Why: a crash
        between checkpoints leaves the steps since the last one on disk, and the curves would show them
        twice. A line cut short by the crash is dropped too, and a last line cut just before its line break
        gets one back: the resumed run's first record was glued to it, and both were lost."""
        if not self.enabled:
            return
        for name in ("steps.jsonl", "metrics.jsonl", "bad_inputs.jsonl"):
            path = self.dir / name
            if not path.is_file():
                continue
            text = path.read_text()
            lines = text.splitlines()
            kept = [line for line in lines if _step_of(line) <= step]
            if len(kept) < len(lines) or (text and not text.endswith("\n")):
                replace_text(path, "".join(line + "\n" for line in kept))
            if len(kept) < len(lines):
                get_logger().info(
                    "resume from step %d: dropped %d line(s) of %s logged after it",
                    step,
                    len(lines) - len(kept),
                    name,
                )
        if self.tb is not None:  # events at step > `step` go
            from torch.utils.tensorboard import SummaryWriter

            with writing(self.dir / "tensorboard"):
                self.tb.close()
                self.tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=step + 1)

    def scalars(self, step: int, values: dict, prefix: str = "train") -> None:
        if self.tb is None:
            return
        # TensorBoard writes in a thread of its own: its failure is raised at a later call, as a bare OSError
        with writing(self.dir / "tensorboard"):
            for key, value in values.items():
                value = _jsonable(value)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def evaluation(self, step: int, split: str, metrics: dict) -> None:
        """Append one line to metrics.jsonl and mirror the numbers to TensorBoard."""
        if not self.enabled:
            return
        record = {"step": step, "split": split, **{k: _jsonable(v) for k, v in metrics.items()}}
        path = self.dir / "metrics.jsonl"
        with writing(path), open(path, "a") as f:
            f.write(_line_break_if_cut(path) + json.dumps(record) + "\n")
        self.scalars(step, metrics, prefix=split)

    def close(self, after_error: bool = False) -> None:
        """after_error: the run is already ending on an error, which a failure here (the same full disk, seen
        by TensorBoard's last flush) must not replace: it is a warning then."""
        if self.tb is None:
            return
        tb, self.tb = self.tb, None
        try:
            with writing(self.dir / "tensorboard"):
                tb.close()
        except WriteError as err:
            if not after_error:
                raise
            get_logger().warning("%s", err)
