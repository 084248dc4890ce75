"""DataLoader workers under start methods other than fork: spawn (macOS's default) and forkserver (Linux's
default from Python 3.14). set_start_method is process-global, so each case runs in a fresh interpreter;
its workers import this module to unpickle `Tiny`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


class Tiny(torch.utils.data.Dataset):
    """Four items that say whether their worker inherited the parent's memory (`inherited`, set in the
    parent after import: a fork child sees it, a spawned or forkserver one re-imports this module) and whose
    parent it is."""

    inherited = False
    tokenizer = None

    def __init__(self):
        from clipbert.data.preprocess import IMAGENET_RGB

        self.norm = IMAGENET_RGB

    def __len__(self) -> int:
        return 4

    def __getitem__(self, key) -> dict:
        _, index = key
        return {
            "index": index,
            "video_id": f"{int(Tiny.inherited)} {os.getppid()}",
            "bad_videos": [],
            "frames": torch.zeros(1, 1, 3, 4, 4, dtype=torch.uint8),  # [N, T, 3, L, L]
            "frames_hw": (4, 4),
        }


def _run(*args: str) -> subprocess.CompletedProcess:
    """`python *args` in a fresh interpreter that imports the checkout and this module."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=REPO, env=env
    )


FORKSERVER_DEFAULT = """
    import multiprocessing.context as context, os
    from clipbert.data.config import DataConfig
    from clipbert.data.loader import build_loader
    from test_start_methods import Tiny
    context._default_context._default_context = context._concrete_contexts["forkserver"]  # as 3.14's
    Tiny.inherited = True
    loader = build_loader(Tiny(), DataConfig(num_workers=2), 2, False, rank=0, world_size=1)
    seen = {v for batch in loader for v in batch["video_ids"]}
    print(sorted(seen) == [f"1 {os.getpid()}"])
"""


def test_linux_workers_fork_where_the_default_is_forkserver():
    """Python 3.14's default on Linux (forkserver), made here as 3.14 makes it: the workers were started
    by the forkserver, ran threads when their init ran, and kept SIGTERM's default, so the launcher's stop
    signal killed them instead of the run taking its checkpoint (docs/TRAINING.md)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("fork workers are chosen on Linux only")
    done = _run("-c", textwrap.dedent(FORKSERVER_DEFAULT))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True", done.stderr  # forked by the main process itself
    assert "already runs other threads" not in done.stderr


SPAWNED_BATCHES = """
    import functools, json, multiprocessing, sys
    from clipbert.data import loader as loader_module
    from clipbert.data.config import DataConfig
    from clipbert.data.datasets import build_dataset
    from clipbert.data.loader import build_loader
    from clipbert.data.preprocess import IMAGENET_RGB
    from clipbert.data.tokenizer import build_tokenizer
    from test_start_methods import summary

    if __name__ == "__main__":
        multiprocessing.set_start_method("spawn")  # as on macOS, where the loader keeps the default
        loader_module.worker_context = functools.partial(loader_module.worker_context, "darwin")
        cfg = DataConfig(**json.loads(sys.argv[1]))
        data = build_dataset("msrvtt_ret", "train", cfg, build_tokenizer(), IMAGENET_RGB)
        loader = build_loader(data, cfg, 4, True, rank=0, world_size=1)
        loader.sampler.set_epoch(1)
        print(json.dumps(summary(loader)))
"""


def summary(loader) -> list[dict]:
    """What a step sees of each batch: indices, videos, bad files, texts and the frames' bytes' digest."""
    return [
        {
            "index": batch["index"].tolist(),
            "videos": batch["video_ids"],
            "bad": sorted(batch["bad_videos"]),
            "ids": batch["input_ids"].tolist(),
            "frames": hashlib.sha1(
                batch["frames"].numpy().tobytes()
            ).hexdigest(),  # float32 [B, N, T, 3, L, L]
        }
        for batch in loader
    ]


@pytest.mark.slow
def test_spawned_workers_see_the_data_and_bad_videos_of_a_single_process(bench, tmp_path):
    """The same seed gives every step the same data, and a corrupt video is still reported (by name, in the
    batch) when the worker that met it was spawned (macOS's default; forkserver's workers re-import alike)."""
    from clipbert.data.config import DataConfig
    from clipbert.data.datasets import build_dataset
    from clipbert.data.loader import build_loader
    from clipbert.data.preprocess import IMAGENET_RGB
    from clipbert.data.tokenizer import build_tokenizer

    videos = tmp_path / "videos"
    videos.mkdir()
    for video in (bench / "videos").iterdir():
        (videos / video.name).symlink_to(video)
    first = sorted(videos.iterdir())[0]
    first.unlink()
    first.write_bytes(b"not a video")
    settings = dict(
        ann_dir=str(bench / "annotations"),
        video_dir=str(videos),
        image_size=32,
        num_clips=1,
        frames_per_clip=1,
        num_workers=2,
        seed=3,
    )
    cfg = DataConfig(**{**settings, "num_workers": 0})
    data = build_dataset("msrvtt_ret", "train", cfg, build_tokenizer(), IMAGENET_RGB)
    loader = build_loader(data, cfg, 4, True, rank=0, world_size=1)
    loader.sampler.set_epoch(1)
    expected = summary(loader)
    assert any(batch["bad"] for batch in expected)  # the corrupt video is met

    main = tmp_path / "main.py"  # a main module file, which spawn and forkserver re-import in the workers
    main.write_text(textwrap.dedent(SPAWNED_BATCHES))
    done = _run(str(main), json.dumps(settings))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == expected
    # spawned, not forked: such a worker cannot take SIGTERM from the main process only, and says so
    assert "already runs other threads" in done.stderr
