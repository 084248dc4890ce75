"""Determinism edge cases: what a run draws and sees does not depend on workers, batching or resumption."""

import pytest
import torch
from test_data_datasets import make_cfg

from clipbert.data.datasets import build_dataset
from clipbert.data.loader import build_loader
from clipbert.data.preprocess import IMAGENET_RGB


def _rng_after_first_batch(loader, epoch: int) -> torch.Tensor:
    """The global torch RNG's next draw after the trainer's way of starting an epoch (loop.py _epoch): the
    iterator made under fork_rng, then the first batch taken outside it."""
    torch.manual_seed(0)
    loader.sampler.set_epoch(epoch)
    with torch.random.fork_rng(devices=[]):
        batches = iter(loader)
    next(batches)
    return torch.rand(4)


@pytest.mark.parametrize("workers", [0, 2])
def test_starting_an_epoch_under_fork_rng_leaves_the_training_rng_alone(bench, tokenizer, workers):
    # Before: NormalizingLoader.__iter__ was a generator, so the DataLoader's iterator (and its draw of the
    # workers' base seed from the global torch RNG) was made at the first next(), outside the trainer's
    # fork_rng: the dropout stream moved every epoch with 0 workers, only in the first with persistent ones.
    cfg = make_cfg(bench, num_workers=workers)
    dataset = build_dataset("msrvtt_qa", "train", cfg, tokenizer, IMAGENET_RGB)
    loader = build_loader(dataset, cfg, 2, True, rank=0, world_size=1)
    torch.manual_seed(0)
    untouched = torch.rand(4)
    for epoch in (0, 1):
        assert torch.equal(_rng_after_first_batch(loader, epoch), untouched), f"epoch {epoch}"


def test_the_dali_loaders_make_their_iterator_when_asked(bench, tokenizer):
    # The same for DALI's overlapped loaders (dali_pipelines/loader.py), here with the decoding left out.
    from dali_pipelines.loader import _OverlappedLoader

    class Passthrough(_OverlappedLoader):
        def submit(self, batch):
            return {"dali": None, "batch": batch}

        def finish(self, job):
            return job["batch"]

    cfg = make_cfg(bench)
    dataset = build_dataset("msrvtt_qa", "train", cfg, tokenizer, IMAGENET_RGB)
    overlapped = Passthrough()
    overlapped.loader = build_loader(dataset, cfg, 2, True, rank=0, world_size=1).loader
    overlapped.sampler = overlapped.loader.sampler
    torch.manual_seed(0)
    untouched = torch.rand(4)
    assert torch.equal(_rng_after_first_batch(overlapped, 0), untouched)


def _one_caption_per_video(bench) -> str:
    """The bench's annotations with one training caption per video: an epoch is one item per caption, and
    8 items of batch 2 keep these runs at 4 steps an epoch (the bench has about 4 captions a video)."""
    import json
    import shutil

    out = bench / "annotations_one_caption"
    if not out.is_dir():
        shutil.copytree(bench / "annotations", out)
        seen, kept = set(), []
        for line in (out / "msrvtt_ret_train.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row["clip_name"] not in seen:
                seen.add(row["clip_name"])
                kept.append(line + "\n")
        (out / "msrvtt_ret_train.jsonl").write_text("".join(kept))
    return str(out)


def _train_on_bench(out, bench, workers: int, **train) -> tuple[list[float], dict]:
    """(every step's loss, the exported weights) of a tiny retrieval run on the real data pipeline, with
    dropout (the tiny preset's 0.1) drawing from the global torch RNG."""
    import json

    from safetensors.torch import load_file
    from test_train_fakes import make_config

    from clipbert.train.run import run

    data = {
        "ann_dir": _one_caption_per_video(bench),
        "video_dir": str(bench / "videos"),
        "num_workers": workers,
    }
    plan = {"epochs": 2, "eval_every": 0, "save_every": 0, **train}
    run(make_config(out, task="msrvtt_ret", data=data, train=plan), torch.device("cpu"))
    losses = [json.loads(line)["loss"] for line in (out / "steps.jsonl").read_text().splitlines()]
    weights = load_file(out / "model" / "model.safetensors") if (out / "model").is_dir() else {}
    return losses, weights


@pytest.mark.usefixtures("cpu_world")
def test_workers_and_reruns_train_bit_identically(bench, tmp_path):
    # Before: the second epoch's losses of num_workers=0 and 2 differed (the dropout stream had moved by one
    # more seed draw with 0 workers), as the fork_rng test above shows at the loader.
    base, weights = _train_on_bench(tmp_path / "w0", bench, 0)
    assert len(base) == 8  # 2 epochs of 4 steps: the second epoch is where the streams parted
    again, again_weights = _train_on_bench(tmp_path / "w0_again", bench, 0)
    workers, worker_weights = _train_on_bench(tmp_path / "w2", bench, 2)
    assert again == base and workers == base
    for name, tensor in weights.items():
        assert torch.equal(again_weights[name], tensor) and torch.equal(worker_weights[name], tensor), name


@pytest.mark.usefixtures("cpu_world")
def test_a_resumed_run_on_real_data_matches_the_uninterrupted_one(bench, tmp_path):
    # Before: the resumed epoch's first batch drew a seed from the restored RNG, which the uninterrupted run
    # had drawn before its checkpoint, so every step after the resume had other dropout masks.
    full, _ = _train_on_bench(tmp_path / "full", bench, 0)
    _train_on_bench(tmp_path / "split", bench, 0, stop_after_steps=6)  # mid second epoch
    resumed, _ = _train_on_bench(tmp_path / "split", bench, 0, resume="auto")
    assert resumed == full


def _epochs(task: str, cfg, tokenizer, batch_size: int = 2) -> list[list[dict]]:
    dataset = build_dataset(task, "train", cfg, tokenizer, IMAGENET_RGB)
    loader = build_loader(dataset, cfg, batch_size, True, rank=0, world_size=1)
    epochs = []
    for epoch in (1, 2):
        loader.sampler.set_epoch(epoch)
        epochs.append(list(loader))
    return epochs


def _same(x, y) -> bool:
    return torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


@pytest.mark.parametrize("task", ["msrvtt_ret", "pretrain"])
def test_workers_draw_the_same_texts_negatives_masks_and_replacements(bench, tokenizer, tmp_path, task):
    # A clean bill, kept as a guard: the kinds that draw texts (retrieval negatives, MLM masks and ITM swaps)
    # with a bad video and a missing image replaced, the same with 0 or 2 workers; two epochs differ.
    import json
    import shutil

    root = tmp_path / "bench"
    shutil.copytree(bench, root)
    annotations = [json.loads(line) for line in (root / "annotations" / f"{task}_train.jsonl").open()]
    if task == "pretrain":
        (root / annotations[1]["file"]).unlink()
    else:
        (root / "videos" / f"{annotations[1]['clip_name']}.mp4").write_bytes(b"not a video")
    serial = _epochs(task, make_cfg(root, num_workers=0), tokenizer)
    parallel = _epochs(task, make_cfg(root, num_workers=2, prefetch_factor=1), tokenizer)
    for one, other in zip(serial, parallel, strict=True):
        for x, y in zip(one, other, strict=True):
            assert x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x), [
                k for k in x if not _same(x[k], y[k])
            ]
    assert any(batch["bad_videos"] for epoch in serial for batch in epoch)
    first, second = (torch.cat([b["input_ids"].flatten(1) for b in epoch], 1) for epoch in serial)
    assert not _same(first, second)
