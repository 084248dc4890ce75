"""Checks at a run's start that every rank sees the files it will read or write, with all ranks stopping
together and a message naming the ranks and hosts that do not.

Why: several nodes share nothing but what a shared filesystem gives them. A rank that cannot read a path the
others can raises in the middle of a collective, and the ranks that can wait in it until the collective's
timeout (10 to 30 minutes) and then fail with an error that names no file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from pathlib import Path

import torch.distributed as dist

from clipbert.train import config as C
from clipbert.train.logging import is_rank0


def _multi_rank() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def check_shared_output_dir(out: Path) -> None:
    """Refuse a training run whose ranks do not share train.output_dir (a node-local disk per node).

    Why: rank 0 alone writes the logs, `latest` and trainer_state.json, and every rank its own RNG and ZeRO
    files into the checkpoint, so on node-local dirs no checkpoint was ever complete: days of training saved
    none that resumes, and the end of the run failed on the nodes without rank 0's best_model/. Each rank
    looks up a file of a new, random name that rank 0 has just written (never cached as missing, even on
    NFS), and all raise together (no rank left waiting in a collective)."""
    if not _multi_rank():
        return
    box = [f".shared_check_{secrets.token_hex(8)}" if is_rank0() else None]
    dist.broadcast_object_list(box, src=0)
    probe, created = out / box[0], False
    if is_rank0():  # rank 0 alone looks at out first: a peer's early lookup would be a cached miss on NFS
        created = not out.exists()
        with contextlib.suppress(OSError):  # an unwritable dir: rank 0 does not see it either (below)
            out.mkdir(parents=True, exist_ok=True)
            probe.write_text(socket.gethostname())
    dist.barrier()
    seen = [None] * dist.get_world_size()
    dist.all_gather_object(seen, (_sees(probe), socket.gethostname()))  # [(seen, host)] per rank
    dist.barrier()  # every rank has looked before rank 0 removes it
    if is_rank0():
        probe.unlink(missing_ok=True)
        if created:  # as before the check: a run that fails to start leaves no empty output_dir
            with contextlib.suppress(OSError):
                out.rmdir()
    blind = [f"rank {r} on {host}" for r, (found, host) in enumerate(seen) if not found]
    if not seen[0][0]:
        raise C.ConfigError(f"train.output_dir={str(out)!r}: rank 0 cannot write a file there")
    if blind:
        raise C.ConfigError(
            f"train.output_dir={str(out)!r} is not one directory shared by every rank: {', '.join(blind)} "
            f"did not see the file rank 0 wrote there ({box[0]}). Each checkpoint holds files of every rank, "
            "so put train.output_dir on a filesystem shared by all nodes (docs/TRAINING.md, Multi-node)"
        )


def _sees(probe: Path, tries: int = 3) -> bool:
    """Whether this rank sees `probe`, looking again after listing its dirs: an NFS client keeps a cached
    "no such file" of an output_dir looked up before rank 0 made it until it revalidates the parent dir,
    which listing it does (open a dir, revalidate it)."""
    for attempt in range(tries):
        if probe.is_file():
            return True
        for directory in (probe.parent.parent, probe.parent):
            with contextlib.suppress(OSError):
                os.listdir(directory)
        time.sleep(0.5 * attempt)
    return probe.is_file()


def paths_every_rank_reads(cfg) -> list[tuple[str, str]]:
    """[(config key, path)] that every rank of this run opens itself: the weights it loads and the data its
    shard reads (each rank builds its own datasets and loaders). train.output_dir is
    check_shared_output_dir's, and model.init_cnn_from / init_bert_from are checked as the config loads."""
    keys = ["eval.checkpoint"] if cfg.eval.only else ["train.init_checkpoint", "train.resume"]
    keys += ["data.ann_dir", *_media_keys(cfg)]
    found = []
    for key in keys:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value and not (key == "train.resume" and value == "auto"):  # auto: a checkpoint of output_dir
            found.append((key, value))
    return found


def _media_keys(cfg) -> list[str]:
    """The data keys of the folders and files this run's task and backend read its pixels from. Why not all:
    a config keeps the keys of the other backends (a task config's video_dir under a frame store built on
    one node from its local videos), and a path no rank reads must not refuse the run."""
    from clipbert.data.datasets import IMAGE_TASKS

    if cfg.task.name in IMAGE_TASKS:
        return ["data.image_root"]
    return ["data.frame_store"] if cfg.data.backend == "frame_store" else ["data.video_dir"]


def unseen_paths(seen: list[tuple[list[bool], str]], paths: list[tuple[str, str]]) -> list[str]:
    """One line per path that some ranks see and others do not, naming the ranks that do not and their hosts.
    seen[rank] = ([whether that rank sees each path], host). A path that no rank sees is not listed: each
    rank then fails alike where it reads it, with that reader's message."""
    lines = []
    for i, (key, path) in enumerate(paths):
        blind = [f"rank {r} on {host}" for r, (flags, host) in enumerate(seen) if not flags[i]]
        if blind and len(blind) < len(seen):
            lines.append(f"{key}={path!r}: not found by {', '.join(blind)}")
    return lines


def check_inputs_on_every_rank(cfg) -> None:
    """Refuse a run whose ranks do not all see its checkpoints and data (paths_every_rank_reads), all ranks
    together. A checkpoint or dataset copied to one node's local disk made the others fail mid-run."""
    if not _multi_rank():
        return
    paths = paths_every_rank_reads(cfg)
    seen = [None] * dist.get_world_size()
    dist.all_gather_object(seen, ([Path(p).exists() for _, p in paths], socket.gethostname()))
    named = [paths]  # rank 0's spelling of each path: every rank's message is the same
    dist.broadcast_object_list(named, src=0)
    lines = unseen_paths(seen, named[0])
    if lines:
        raise C.ConfigError(
            "every rank reads these paths itself, so each must be on a filesystem all nodes share (or copied "
            "to the same path on every node): " + "; ".join(lines)
        )


def agree_to_start(error: str | None) -> str | None:
    """Every rank's start-up error (None: it is ready), gathered: what to stop with, naming the ranks and
    hosts, or None when all are ready. Each rank calls it once, right after the process group forms.

    Why: a rank whose config failed (a weights file or data folder on another node's disk) used to exit
    before the process group formed, and the others waited at its rendezvous until the timeout (10 to 30
    minutes), then failed without naming a file."""
    if not _multi_rank():
        return error
    said = [None] * dist.get_world_size()
    dist.all_gather_object(said, (error, socket.gethostname()))  # [(error or None, host)] per rank
    ranks_by_error: dict[str, list[str]] = {}
    for rank, (message, host) in enumerate(said):
        if message:
            ranks_by_error.setdefault(message, []).append(f"rank {rank} on {host}")
    return "; ".join(f"{', '.join(ranks)}: {message}" for message, ranks in ranks_by_error.items()) or None
