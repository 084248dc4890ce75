"""One training run at a time per train.output_dir: rank 0 holds an advisory lock on <output_dir>/.run.lock
for the whole run, and a second run into the same folder stops at its start, naming the holder.

Why: the same job submitted twice, or a requeued job started while its first instance still runs, wrote two
runs' checkpoints, `latest`, steps.jsonl and metrics.jsonl into one folder: the resume then loaded either
run's state, and the logs interleaved both. `flock` is released by the kernel when the holder dies (a
SIGKILL, a lost node on NFS once its lease ends), so no stale lock is ever left to clear by hand.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import socket
from pathlib import Path

from clipbert.train import config as C
from clipbert.train.logging import get_logger, is_rank0
from clipbert.train.rank_checks import agree_to_start

LOCK_NAME = ".run.lock"
# filesystems that do not lock (Lustre mounted without -o flock, NFS without a lock manager)
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


class _Held:
    """The open, locked file; removes it (and a folder it created, if empty) on release."""

    def __init__(self, fd: int, path: Path, created_dir: bool):
        self.fd, self.path, self.created_dir = fd, path, created_dir

    def release(self) -> None:
        # unlink while still holding it: a run that opened the old file then finds it unlinked and retries
        with contextlib.suppress(OSError):
            self.path.unlink()
        # LOCK_UN as well as close: forked DataLoader workers share the open file, which close leaves locked.
        # Quietly: this runs in the run's `finally`, where an NFS hiccup must not replace the run's own error
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        if self.created_dir:  # as before the lock: a run that fails to start leaves no empty output_dir
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()


def _take(out: Path) -> tuple[_Held | None, str | None]:
    """(the held lock, None), or (None, why this run may not start)."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None, None  # the checks and writes that follow name the unwritable folder
    path = out / LOCK_NAME
    for _ in range(5):  # retried only when the holder removed the file between our open and our lock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None, None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd) or "holder unknown"
            os.close(fd)
            return None, (
                f"train.output_dir={str(out)!r} is in use by another training run ({holder}; {LOCK_NAME}): "
                "wait for it to end, or give a new train.output_dir"
            )
        except OSError as err:
            os.close(fd)
            if err.errno not in _NO_LOCKS:  # an I/O error: said by every rank together, not raised by rank 0
                return None, f"train.output_dir={str(out)!r}: cannot lock {LOCK_NAME} ({err.strerror or err})"
            get_logger().warning(
                "train.output_dir=%r cannot be locked (%s): a second run started into it would not be "
                "stopped",
                str(out),
                os.strerror(err.errno),
            )
            _remove_unused(path, created)
            return None, None
        if _same_file(fd, path):
            _say_holder(fd)
            return _Held(fd, path, created), None
        os.close(fd)
    return None, None


def _remove_unused(path: Path, created_dir: bool) -> None:
    """The lock file that could not be locked, if empty (ours, or another unlocked run's), and the folder made
    for it: a run that fails at start leaves no output_dir, as on a filesystem with locks."""
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0:
            path.unlink()
        if created_dir:
            path.parent.rmdir()


def _say_holder(fd: int) -> None:
    """Write who holds the lock, for a refused run's message. A failed write (a full disk, a quota) leaves it
    unsaid ("holder unknown"): the lock is held all the same, and the run's first file names the full disk.
    Why: raised here, it left the descriptor open and the file locked (a second run() of the process was
    refused as "in use"), and rank 0 stopped before agreeing, so the other ranks waited for it."""
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode())


def holder(out: Path) -> str | None:
    """Who holds `out` now (the holder's line, or "holder unknown"), None when no run does. Only for a process
    that holds no lock on `out` itself: it opens and closes the lock file, and on NFS (flock done as a POSIX
    lock) that close would drop the process's own lock."""
    try:
        fd = os.open(out / LOCK_NAME, os.O_RDWR)
    except OSError:  # no lock file: no run holds it (a holder removes its file only as it lets go)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read(fd) or "holder unknown"
    except OSError:  # a filesystem without locks: nothing is known
        return None
    finally:
        os.close(fd)
    return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    return ""


@contextlib.contextmanager
def exclusive_output_dir(out: Path, enabled: bool = True):
    """Hold train.output_dir for the block (rank 0 locks; every rank stops together if it is taken).
    Every rank enters it with the same `enabled`: the refusal is agreed in a collective."""
    if not enabled:
        yield
        return
    held, error = _take(out) if is_rank0() else (None, None)
    error = agree_to_start(error)
    if error:
        if held:
            held.release()
        raise C.ConfigError(error)
    try:
        yield
    finally:
        if held:
            held.release()
