"""DataLoader workers and stop signals: a SIGTERM from anyone but the main process (the deepspeed launcher,
SLURM, a shell) leaves them feeding the main process until its checkpoint; the main process's SIGTERM (what
multiprocessing sends at exit) still ends them, so exits never hang."""

import multiprocessing
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from clipbert.data.loader import ignore_interrupts, obey_sigterm_from_parent_only

pytestmark = pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="needs POSIX sigwaitinfo")


def _guarded_sleeper(ready):
    obey_sigterm_from_parent_only()
    ready.set()
    time.sleep(60)


def _guard_with_another_thread(result):
    threading.Thread(target=time.sleep, args=(10,), daemon=True).start()
    result.put(obey_sigterm_from_parent_only())


def test_the_guard_stands_down_when_other_threads_already_run():
    # A thread that does not block SIGTERM would take the signal instead of the watcher (spawn and forkserver
    # workers run such threads by the time worker_init_fn runs), so the guard changes nothing there.
    ctx = multiprocessing.get_context("fork")
    result = ctx.Queue()
    child = ctx.Process(target=_guard_with_another_thread, args=(result,), daemon=True)
    child.start()
    assert result.get(timeout=20) is False
    child.join(20)


def _wait_alive(process, seconds: float) -> bool:
    process.join(seconds)
    return process.is_alive()


def test_sigterm_from_the_parent_kills_and_from_others_is_ignored():
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=_guarded_sleeper, args=(ready,), daemon=True)
    child.start()
    assert ready.wait(20)
    subprocess.run(["kill", "-TERM", str(child.pid)], check=True)  # another sender, like the launcher
    assert _wait_alive(child, 1.0)
    child.terminate()  # the parent's SIGTERM, as multiprocessing's exit handler and DataLoader shutdown send
    assert not _wait_alive(child, 10.0)
    assert child.exitcode == 0  # as PyTorch's worker handler exits on its parent's SIGTERM


class _Counting(torch.utils.data.Dataset):
    def __len__(self):
        return 1000

    def __getitem__(self, index):
        return index


def test_a_worker_signalled_by_another_process_keeps_feeding():
    loader = torch.utils.data.DataLoader(
        _Counting(), num_workers=1, batch_size=None, persistent_workers=True, worker_init_fn=ignore_interrupts
    )
    batches = iter(loader)
    assert next(batches) == 0
    (worker,) = batches._workers
    subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)
    time.sleep(0.5)
    assert worker.is_alive()
    assert [next(batches) for _ in range(3)] == [1, 2, 3]
    batches._shutdown_workers()
    assert not worker.is_alive()


# A training run in miniature: workers feed the loop; on SIGTERM the loop finishes its accumulation window
# (it needs more batches) and checkpoints. The test signals the process tree as deepspeed's launcher does
# (deepspeed/launcher/launch.py terminate_process_tree: children first, then the rank process).
_RUN = textwrap.dedent(
    """
    import sys, time, torch
    from clipbert.data.loader import ignore_interrupts
    from clipbert.train.checkpoint import StopSignal

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 10**6

        def __getitem__(self, index):
            time.sleep(0.005)
            return index

    loader = torch.utils.data.DataLoader(
        Items(), num_workers=2, batch_size=None, persistent_workers=True, worker_init_fn=ignore_interrupts
    )
    with StopSignal() as stop:
        batches = iter(loader)
        print("ready", flush=True)
        for index in batches:
            if stop.requested:
                break
        window = [next(batches) for _ in range(8)]  # the rest of the accumulation window
        time.sleep(0.3)  # the checkpoint
        print("checkpointed after", index, window[-1], flush=True)
    """
)


def test_launcher_sigterm_to_the_whole_tree_still_checkpoints():
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        main = psutil.Process(proc.pid)
        tree = main.children(recursive=True)
        assert len(tree) >= 2  # the two workers
        started = time.monotonic()
        for process in [*tree, main]:
            process.terminate()
        gone, alive = psutil.wait_procs([*tree, main], timeout=30)
        elapsed = time.monotonic() - started
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not alive, f"still running after 30 s: {alive}"
    assert {p.pid: p.returncode for p in gone}[proc.pid] == 0, err  # wait_procs reaped it, not Popen
    assert "checkpointed after" in out
    assert "killed by signal" not in err and "SIGTERM from pid" in err
    assert elapsed < 20
