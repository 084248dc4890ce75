"""A loader's workers must not collect an earlier loader's garbage: collected in a worker, its iterator's
__del__ printed "can only test a child process" tracebacks into the run's output (make demo, stage 2).
In a fresh interpreter: pytest's own references (assertion rewriting, fixtures) keep such garbage alive."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import functools, gc, os
    import torch
    from torch.utils.data import DataLoader, Dataset
    from clipbert.data.loader import ignore_interrupts

    class Frames(Dataset):
        def __init__(self, collect=False):
            self.collect = collect
        def __len__(self):
            return 4
        def __getitem__(self, index):
            if self.collect:  # a worker's garbage collection, made certain
                gc.collect()
            return torch.zeros(3)

    class Holder:
        pass

    init = functools.partial(ignore_interrupts, main_pid=os.getpid())  # build_loader's worker init
    earlier = DataLoader(Frames(), batch_size=2, num_workers=1, persistent_workers=True, worker_init_fn=init)
    for _ in earlier:
        pass
    cycle = Holder()
    cycle.loader, cycle.me = earlier, cycle  # a finished stage's loader, left in a reference cycle
    gc.disable()  # the parent's collector must not get to it before the fork
    del earlier, cycle
    later = DataLoader(Frames(collect=True), batch_size=2, num_workers=1, worker_init_fn=init)
    print(sum(len(batch) for batch in later))
    """
)


def test_workers_leave_the_parents_garbage_alone():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "4", done.stderr
    assert "can only test a child process" not in done.stderr
