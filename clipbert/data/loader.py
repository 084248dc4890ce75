"""DataLoader with rank sharding, set_epoch, mid-epoch resume, and exactly-once evaluation."""

from __future__ import annotations

import functools
import gc
import math
import multiprocessing
import os
import signal
import sys
import threading

import torch
from torch.utils.data import DataLoader, Sampler

from .collate import Collator
from .config import DataConfig
from .datasets import PretrainDataset, VQADataset
from .preprocess import Normalization, normalize_padded

IMAGE_SETS = (PretrainDataset, VQADataset)  # decoded in the workers into `frames`, whatever the backend


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else RANK / WORLD_SIZE, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def ignore_interrupts(worker_id: int, then=None, main_pid: int | None = None) -> None:
    """DataLoader worker_init_fn: ignore SIGINT, obey SIGTERM only from the main process, then run
    `then(worker_id)` when given (chain another init with functools.partial(ignore_interrupts, then=fn)).

    Why: a stop signal reaches the workers too (Ctrl-C the whole process group; the deepspeed launcher, and
    schedulers like SLURM, SIGTERM every process of the tree, the workers first). A worker killed by it makes
    the main process raise "DataLoader worker killed by signal" instead of finishing its step and taking the
    checkpoint. SIGTERM cannot simply be ignored: at interpreter exit multiprocessing ends the persistent
    workers with it and joins them, so a worker that ignored it hung every exit (`make demo` never returned).
    Hence the sender decides: the main process's SIGTERM kills as before, anyone else's is ignored, and the
    worker feeds the main process until it shuts the workers down (or dies: PyTorch's watchdog then ends
    them). SIGKILL still kills. `main_pid`: the main process (build_loader binds it); by default the parent,
    which it is unless the workers come from a forkserver."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    obey_sigterm_from_parent_only(main_pid)
    # Everything the fork inherited is left to the parent: the parent's garbage, such as an earlier loader's
    # iterator in a reference cycle (`make demo`'s first stage, in the same process), was otherwise collected
    # here, and its __del__ printed "can only test a child process" tracebacks into the run's output.
    # (Frozen objects are also never touched by this worker's collector, which spares their pages a copy.)
    gc.freeze()
    if then is not None:
        then(worker_id)


def obey_sigterm_from_parent_only(main_pid: int | None = None) -> bool:
    """Block SIGTERM in this process and let a watcher thread take it: from the main process (`main_pid`, by
    default the parent) it ends the process (exit status 0); from any other sender it is dropped with a
    warning.
    Call it in a worker process's main thread before that thread starts others, as the DataLoader's
    worker_init_fn does: threads created later inherit the blocked mask, so only the watcher receives it.
    Whatever handler SIGTERM has (PyTorch's workers install a C one; a fork inherits the main process's
    Python one, e.g. the trainer's StopSignal) is bypassed: a blocked signal never reaches it. Returns False
    (and changes nothing) without POSIX sigwaitinfo, or when the process already runs other threads (a
    spawn or forkserver worker does by then): a thread that does not block SIGTERM would take it instead."""
    if not hasattr(signal, "sigwaitinfo"):
        return False
    if _thread_count() != 1:
        print(
            f"DataLoader worker {os.getpid()}: already runs other threads, so SIGTERM keeps its default "
            "(a stop signal to every process kills this worker; use the fork start method)",
            file=sys.stderr,
            flush=True,
        )
        return False
    main = main_pid or os.getppid()
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def watch() -> None:
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid == main or os.getppid() != parent:  # from the main process, or orphaned
                # Exit status 0, as PyTorch's own worker SIGTERM handler does for its parent's SIGTERM: the
                # main process's SIGCHLD check would otherwise report a worker "killed by signal".
                os._exit(0)
            print(
                f"DataLoader worker {os.getpid()}: SIGTERM from pid {info.si_pid} ignored; the main process "
                "ends this worker when it stops",
                file=sys.stderr,
                flush=True,
            )

    threading.Thread(target=watch, name="sigterm-from-parent", daemon=True).start()
    return True


def _thread_count() -> int:
    """OS threads of this process (Python's count misses threads started by C libraries)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


class ShardedSampler(Sampler):
    """Yields (epoch, index) keys of this rank's shard.

    Training: a permutation seeded by (seed, epoch), padded by wrapping so every rank gets the same count,
    then strided by rank (as DistributedSampler). Evaluation: range(len) strided by rank without padding, so
    every example is visited exactly once across ranks, except that a rank left with nothing (fewer examples
    than ranks) repeats example 0. `set_epoch(epoch, batches_consumed)` resumes
    mid-epoch: the first `batches_consumed * batch_size` keys of the shard are skipped, for that epoch only.
    `len()` counts the keys it will yield, so in a resumed epoch it excludes the skipped ones (the epoch's
    full count is `batches_consumed` plus the loader's length).
    """

    def __init__(self, size: int, batch_size: int, train: bool, seed: int = 0, rank=None, world_size=None):
        if rank is None or world_size is None:
            rank, world_size = dist_rank_world()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.size, self.batch_size, self.train, self.seed = size, batch_size, train, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, batches_consumed: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(batches_consumed) * self.batch_size

    def shard(self) -> list[int]:
        if not self.train:
            shard = list(range(self.rank, self.size, self.world_size))
            if not shard and self.size:
                # A set smaller than the world leaves this rank nothing. It gets a repeat of example 0
                # (evaluation deduplicates by index): under ZeRO-3 every forward is a collective, and a rank
                # that runs none breaks the others' (a gloo collective mismatch; a hang on NCCL).
                shard = [0]
            return shard
        # modulo 2**64, the generator's seed range: data.seed may be any non-negative int (a time in
        # microseconds, say), and from 1.8e14 on the product overflowed ("Overflow when unpacking long long")
        generator = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) % 2**64)
        order = torch.randperm(self.size, generator=generator).tolist()
        total = math.ceil(self.size / self.world_size) * self.world_size
        order += (order * math.ceil(total / max(1, self.size)))[: total - self.size]
        return order[self.rank : total : self.world_size]

    def __iter__(self):
        return iter([(self.epoch, index) for index in self.shard()[self.skip :]])

    def __len__(self) -> int:
        # Counted, not drawn: the trainer asks len(loader) every micro step (its accumulation window), and
        # drawing the epoch's permutation for it took 0.15 s a step on a 3M-example pre-training set.
        if self.train:
            shard = math.ceil(self.size / self.world_size)  # padded by wrapping: the same on every rank
        else:
            shard = len(range(self.rank, self.size, self.world_size)) or min(1, self.size)  # see shard()
        return max(0, shard - self.skip)


def build_loader(
    dataset,
    data_cfg: DataConfig,
    batch_size: int,
    train: bool,
    rank: int | None = None,
    world_size: int | None = None,
    device: str = "cpu",
):
    """A DataLoader over `dataset` (a task dataset or RetrievalEvalData.videos).

    `loader.sampler.set_epoch(epoch, batches_consumed)` before each epoch. Training drops the last
    incomplete batch. With backend "dali" (or a frame store read by DALI) returns a loader of the same
    interface whose frames DALI decodes on `device` ("cuda[:k]" or "cpu").
    """
    sampler = ShardedSampler(len(dataset), batch_size, train, data_cfg.seed, rank, world_size)
    workers = data_cfg.num_workers
    # Images (pre-training, VQA) carry `frames`, not the `jpegs` or video bytes that DALI's loaders decode.
    images = isinstance(dataset, IMAGE_SETS)
    collate = Collator(
        getattr(dataset.tokenizer, "pad_token_id", 0) or 0,
        pack_rows=data_cfg.dali_pack if data_cfg.backend == "dali" else 1,
    )
    if data_cfg.backend == "dali" and not data_cfg.dali_trim and not images:
        collate = WholeFileDaliIndices(collate)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        prefetch_factor=data_cfg.prefetch_factor if workers else None,
        persistent_workers=workers > 0,
        multiprocessing_context=worker_context() if workers else None,
        worker_init_fn=functools.partial(ignore_interrupts, main_pid=os.getpid()),
        pin_memory=device.startswith("cuda") and (data_cfg.backend != "dali" or images),
        drop_last=train,
    )
    if data_cfg.backend == "dali" and not images:
        from dali_pipelines.loader import DaliLoader

        return DaliLoader(loader, dataset, data_cfg, device=device)
    uses_dali_store = data_cfg.backend == "frame_store" and data_cfg.frame_store_reader == "dali"
    if uses_dali_store and not images:
        from dali_pipelines.loader import DaliFrameStoreLoader

        return DaliFrameStoreLoader(loader, dataset, data_cfg, device=device)
    return NormalizingLoader(loader, dataset.norm, device)


def worker_context(platform: str = sys.platform):
    """The DataLoader workers' multiprocessing context: fork on Linux, else None (the platform's default:
    spawn on macOS and Windows, where fork is unsafe or missing).

    Why not Python's default on Linux: from Python 3.14 it is forkserver, whose workers already run other
    threads when their init runs, so they cannot take SIGTERM from the main process only (ignore_interrupts):
    the launcher's stop signal killed them, and the run ended in "DataLoader worker killed by signal" instead
    of its checkpoint. Fork workers also share the datasets' frozen pages (TaskData.train) and start in
    milliseconds, where a spawned one imports torch again (seconds, at every loader). Chosen even when the
    program set another start method: that cannot be told apart from a default that something fixed (the
    first tqdm bar does, making a multiprocessing lock), and no worker here needs more than fork gives."""
    return multiprocessing.get_context("fork") if platform.startswith("linux") else None


class WholeFileDaliIndices:
    """collate_fn for DALI without `dali_trim`: adds `dali_indices`, the sampled frames in DALI's count of
    each whole file, in the worker. Why: DALI counts every packet of a repeated timestamp, PyAV's frame
    index (the sampler's) counts it once (dali_pipelines/trim.py: whole_file_indices)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items: list[dict]) -> dict:
        import numpy as np

        from dali_pipelines.trim import whole_file_indices

        batch = self.collate(items)
        if "video_paths" in batch and "dali_indices" not in batch:
            indices = batch["frame_indices"].numpy()
            mapped = [whole_file_indices(p, i) for p, i in zip(batch["video_paths"], indices, strict=True)]
            batch["dali_indices"] = torch.from_numpy(np.stack(mapped).astype(np.int64))
        return batch


class NormalizingLoader:
    """Wraps the DataLoader: workers ship uint8 padded frames, normalized here on `device` (4x less
    inter-process and host-to-device traffic than float32; on the GPU the normalization is free)."""

    def __init__(self, loader: DataLoader, norm: Normalization, device: str = "cpu"):
        self.loader, self.sampler, self.norm = loader, loader.sampler, norm
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        # The DataLoader's iterator is made here, not at the first next(): making it draws the workers' base
        # seed from the global torch RNG, and the trainer makes it under fork_rng so that the draw does not
        # shift the dropout stream. In a generator body the draw ran at the first batch, outside fork_rng:
        # every epoch (num_workers=0) or only the first (persistent workers) moved the stream, so runs with
        # 0 and 2 workers, and a resumed run and the uninterrupted one, trained with different dropout.
        return self._normalized(iter(self.loader))

    def _normalized(self, batches):
        for batch in batches:
            yield finish_frames(batch, self.norm, self.device)


def finish_frames(batch: dict, norm: Normalization, device: torch.device) -> dict:
    """uint8 frames [B, N, T, 3, L, L] + frames_hw [B, 2] -> normalized float32 frames on `device`."""
    hw = batch.pop("frames_hw")
    frames = batch["frames"].to(device, non_blocking=True)
    batch["frames"] = normalize_padded(frames, hw.to(device), norm)
    return batch
