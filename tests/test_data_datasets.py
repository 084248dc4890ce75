"""Every task dataset on the synthetic benchmark, and the DataLoader's sharding, resume and determinism."""

import json

import numpy as np
import pytest
import torch

from clipbert.data.config import DataConfig
from clipbert.data.datasets import RetrievalEvalData, build_dataset
from clipbert.data.loader import NormalizingLoader, ShardedSampler, build_loader
from clipbert.data.preprocess import IMAGENET_RGB
from clipbert.data.text import tokenize
from clipbert.data.tokenizer import build_tokenizer

L = 24  # tiny frames keep the CPU tests fast


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def make_cfg(bench, **overrides):
    values = dict(
        ann_dir=str(bench / "annotations"),
        video_dir=str(bench / "videos"),
        image_size=L,
        num_clips=2,
        num_test_clips=3,
        frames_per_clip=2,
        num_workers=0,
        itm_neg_size=2,
        seed=3,
    )
    values.update(overrides)
    return DataConfig(**values)


def first_batch(dataset, cfg, batch_size=2, train=True):
    loader = build_loader(dataset, cfg, batch_size, train, rank=0, world_size=1)
    loader.sampler.set_epoch(1)
    return next(iter(loader))


def check_common(batch, b, n, m=None):
    assert batch["frames"].shape == (b, n, 2, 3, L, L) and batch["frames"].dtype == torch.float32
    assert batch["index"].shape == (b,) and len(batch["video_ids"]) == b and batch["bad_videos"] == []
    if m is not None:
        assert batch["input_ids"].shape[:2] == (b, m) and batch["input_ids"].dtype == torch.int64
        assert batch["attention_mask"].shape == batch["input_ids"].shape
        assert (batch["input_ids"][..., 0] == 101).all()  # [CLS] first
        assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()  # padding is [PAD]


@pytest.mark.parametrize("task", ["msrvtt_ret", "didemo_ret", "anet_ret"])
def test_retrieval_train_has_one_positive_and_negatives(bench, tokenizer, task):
    cfg = make_cfg(bench)
    dataset = build_dataset(task, "train", cfg, tokenizer, IMAGENET_RGB)
    batch = first_batch(dataset, cfg)
    check_common(batch, 2, 2, m=3)
    np.testing.assert_array_equal(batch["labels"], [[1, 0, 0], [1, 0, 0]])
    item = dataset[(1, 4)]
    video_id, texts = dataset.videos[4]
    positive = tokenizer.decode(item["input_ids"][0], skip_special_tokens=True)
    assert positive in [tokenizer.decode(tokenizer(t)["input_ids"], skip_special_tokens=True) for t in texts]
    negatives = {tokenizer.decode(ids, skip_special_tokens=True) for ids in item["input_ids"][1:]}
    own = {tokenizer.decode(tokenizer(t)["input_ids"], skip_special_tokens=True) for t in texts}
    assert not negatives & own or len({v for v, _ in dataset.videos}) < 2


@pytest.mark.parametrize("task", ["msrvtt_ret", "didemo_ret"])
def test_retrieval_eval_gives_videos_and_all_texts(bench, tokenizer, task):
    cfg = make_cfg(bench)
    data = build_dataset(task, "test", cfg, tokenizer, IMAGENET_RGB)
    assert isinstance(data, RetrievalEvalData)
    assert data.input_ids.shape[0] == data.text_to_video.shape[0] == data.attention_mask.shape[0]
    assert int(data.text_to_video.max()) == len(data.video_ids) - 1
    batch = first_batch(data.videos, cfg, train=False)
    check_common(batch, 2, 3)
    assert batch["video_ids"] == data.video_ids[:2]
    if task == "didemo_ret":  # one paragraph per video: the sentences joined
        assert len(data.video_ids) == data.input_ids.shape[0]


@pytest.mark.parametrize("task", ["msrvtt_qa", "tgif_frameqa"])
def test_qa_labels_come_from_ans2label(bench, tokenizer, task):
    cfg = make_cfg(bench)
    dataset = build_dataset(task, "train", cfg, tokenizer, IMAGENET_RGB)
    batch = first_batch(dataset, cfg, batch_size=3)
    check_common(batch, 3, 2, m=1)
    assert batch["labels"].shape == (3,) and len(batch["answer_types"]) == 3
    for row, index in enumerate(batch["index"].tolist()):
        answer = dataset.examples[index]["answer"]
        assert batch["labels"][row] == dataset.ans2label.get(answer, -100)
    dataset.ans2label = {}  # unknown answers get -100
    assert dataset[(0, 0)]["labels"] == -100


@pytest.mark.parametrize("task", ["tgif_action", "tgif_transition", "msrvtt_mc"])
def test_multiple_choice_has_five_options(bench, tokenizer, task):
    cfg = make_cfg(bench)
    dataset = build_dataset(task, "test", cfg, tokenizer, IMAGENET_RGB)
    batch = first_batch(dataset, cfg, train=False)
    check_common(batch, 2, 3, m=5)
    for row, index in enumerate(batch["index"].tolist()):
        assert batch["labels"][row] == dataset.examples[index]["answer"]


def test_pretrain_masks_tokens_and_swaps_captions(bench, tokenizer):
    cfg = make_cfg(bench, mlm_prob=0.5)
    dataset = build_dataset("pretrain", "train", cfg, tokenizer, IMAGENET_RGB)
    batch = first_batch(dataset, cfg, batch_size=4)
    assert batch["frames"].shape == (4, 1, 1, 3, L, L)
    assert batch["mlm_labels"].shape == batch["input_ids"].shape == (4, 1, batch["input_ids"].shape[-1])
    items = [dataset[(e, i)] for e in range(4) for i in range(len(dataset))]
    itm = np.array([item["itm_labels"] for item in items])
    assert 0.25 < itm.mean() < 0.75  # p = 0.5 over 72 draws
    for item in items:
        labels = np.array(item["mlm_labels"][0])
        if item["itm_labels"] == 0:
            assert (labels == -100).all()
        assert labels[0] == -100 and labels[-1] == -100  # [CLS] and [SEP] are never masked
    picked = np.concatenate([np.array(it["mlm_labels"][0]) != -100 for it in items if it["itm_labels"]])
    assert 0.3 < picked.mean() < 0.7
    masked = np.concatenate(
        [
            np.array(it["input_ids"][0])[np.array(it["mlm_labels"][0]) != -100]
            for it in items
            if it["itm_labels"]
        ]
    )
    assert (masked == tokenizer.mask_token_id).mean() > 0.6  # 80% [MASK]
    # Swapped captions are masked like matching ones: [MASK] must not give the match away.
    mask_rate = {
        label: np.mean(
            [
                (np.array(it["input_ids"][0]) == tokenizer.mask_token_id).mean()
                for it in items
                if it["itm_labels"] == label
            ]
        )
        for label in (0, 1)
    }
    assert mask_rate[0] > 0.15 and abs(mask_rate[0] - mask_rate[1]) < 0.1, mask_rate


def test_pretrain_negatives_come_from_another_image(bench, tokenizer):
    # COCO has 5 captions an image: a swapped caption of the same image is a true match labelled 0
    cfg = make_cfg(bench, mlm_prob=0.0)
    dataset = build_dataset("pretrain", "train", cfg, tokenizer, IMAGENET_RGB)
    first, other = (
        dataset.examples[0],
        next(e for e in dataset.examples if e["file"] != dataset.examples[0]["file"]),
    )
    same = [dict(first, caption=f"the same image, caption {k}") for k in range(6)]
    dataset.examples = [first, *same, dict(other, caption="another image")]
    wanted = dataset.tokenizer("another image")["input_ids"]
    negatives = [it for it in (dataset[(e, 0)] for e in range(40)) if it["itm_labels"] == 0]
    assert negatives and all(it["input_ids"][0] == wanted for it in negatives)


def test_retrieval_negatives_are_never_a_positive_text(tokenizer, tmp_path):
    # Captions repeat across videos ("a man is talking"): another video's copy of the positive, labelled 0,
    # contradicts the positive. Redrawn, as pretraining redraws a caption of the same image.
    texts = {"a": ["a dog runs"], "b": ["a dog runs", "a cat sleeps"], "c": ["a bird"], "d": ["a fish"]}
    with open(tmp_path / "msrvtt_ret_train.jsonl", "w") as f:
        for video, captions in texts.items():
            f.writelines(json.dumps({"caption": c, "clip_name": video}) + "\n" for c in captions)
    cfg = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path), itm_neg_size=3, seed=3)
    dataset = build_dataset("msrvtt_ret", "train", cfg, tokenizer, IMAGENET_RGB)
    dataset.visual = lambda video_id, epoch: {"video_id": video_id}  # the texts alone: no decoding
    by_ids = {tuple(tokenize(tokenizer, [t], dataset.max_len)[0]): t for ts in texts.values() for t in ts}
    for epoch in range(20):
        for index, (_, positives) in enumerate(dataset.videos):
            item = dataset.load(index, epoch)
            chosen = [by_ids[tuple(ids)] for ids in item["input_ids"]]
            assert chosen[0] in positives and not set(chosen[1:]) & set(positives), (epoch, index, chosen)
            assert dataset.load(index, epoch)["input_ids"] == item["input_ids"]  # (seed, epoch, index) only


@pytest.mark.parametrize("task", ["pretrain", "vqa"])
@pytest.mark.parametrize("backend", ["dali", "frame_store"])
def test_image_tasks_with_a_dali_backend_load_images_in_the_workers(
    bench, tokenizer, tmp_path, task, backend
):
    # The store and DALI serve the video tasks; images are decoded in the workers into `frames`, which
    # DALI's loaders cannot take (they decode `jpegs` or video bytes: KeyError). The store is never opened.
    store = str(tmp_path / "videos_only.h5")
    cfg = make_cfg(bench, backend=backend, frame_store=store, frame_store_reader="dali")
    dataset = build_dataset(task, "train", cfg, tokenizer, IMAGENET_RGB)
    loader = build_loader(dataset, cfg, 2, True, rank=0, world_size=1)
    assert isinstance(loader, NormalizingLoader)
    assert next(iter(loader))["frames"].shape == (2, 1, 1, 3, L, L)


def test_vqa_soft_targets_are_the_human_answers_scores(bench, tokenizer):
    from clipbert.data.vqa_answers import answer_scores

    cfg = make_cfg(bench)
    dataset = build_dataset("vqa", "train", cfg, tokenizer, IMAGENET_RGB)
    batch = first_batch(dataset, cfg, batch_size=4)
    assert batch["frames"].shape == (4, 1, 1, 3, L, L) and batch["input_ids"].shape[:2] == (4, 1)
    assert batch["answer_labels"].shape == batch["answer_scores"].shape and batch["answered"].all()
    for row, index in enumerate(batch["index"].tolist()):
        example = dataset.examples[index]
        assert batch["question_ids"][row] == example["question_id"]
        # the answers in the vocabulary (the others cannot be predicted): which examples come first is the
        # sampler's choice, and one of them may hold a rare answer
        scored = answer_scores(example["answers"]).items()
        want = {dataset.ans2label[a]: v for a, v in scored if a in dataset.ans2label}
        labels, scores = batch["answer_labels"][row], batch["answer_scores"][row]
        got = {int(a): float(v) for a, v in zip(labels, scores) if a != -100}
        assert got == pytest.approx(want) and max(got.values(), default=1.0) >= 0.9
        assert (scores[labels == -100] == 0).all()  # padding carries no score


def test_vqa_precomputed_labels_unanswered_test_lines_and_a_missing_image(bench, tokenizer, tmp_path):
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "vqa_ans2label.json").write_text('{"red": 0, "2": 1, "yes": 2, "0": 3}')
    image = "images/" + sorted(p.name for p in (bench / "images").iterdir())[0]
    rows = [
        {"question_id": 7, "question": "what color", "file": image, "labels": {"Red": 1.0, "blue": 0.3}},
        {"question_id": 8, "question": "how many", "file": "images/missing.jpg", "answers": ["two"] * 10},
        {"question_id": 9, "question": "is it", "file": image},  # a test-dev line: no answers
    ]
    (ann / "vqa_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg(bench, ann_dir=str(ann), image_root=str(bench))
    dataset = build_dataset("vqa", "val", cfg, tokenizer, IMAGENET_RGB)
    first, bad, unanswered = (dataset[(0, i)] for i in range(3))
    assert (first["answer_labels"], first["answer_scores"], first["answered"]) == ([0], [1.0], True)
    assert (unanswered["answer_labels"], unanswered["answered"]) == ([], False)
    # the missing image is replaced and reported, but its question keeps its own id (the results file)
    assert bad["question_id"] == 8 and bad["source_index"] == 2 and "missing" in bad["bad_videos"][0]
    # ten "none": a training target for "0", but the official evaluation does not normalize unanimous answers
    none = {"question_id": 10, "question": "how many", "file": image, "answers": ["none"] * 10}
    for split in ("train", "val"):
        (ann / f"vqa_{split}.jsonl").write_text(json.dumps(none) + "\n")
    assert build_dataset("vqa", "train", cfg, tokenizer, IMAGENET_RGB)[(0, 0)]["answer_labels"] == [3]
    assert build_dataset("vqa", "val", cfg, tokenizer, IMAGENET_RGB)[(0, 0)]["answer_labels"] == []
    (ann / "vqa_val.jsonl").write_text(json.dumps({**rows[0], "labels": "red"}) + "\n")
    with pytest.raises(ValueError, match=r"vqa_val.jsonl:1: answers must be a list"):
        build_dataset("vqa", "val", cfg, tokenizer, IMAGENET_RGB)


def test_samples_are_a_pure_function_of_seed_epoch_index(bench, tokenizer):
    cfg = make_cfg(bench)
    dataset = build_dataset("msrvtt_ret", "train", cfg, tokenizer, IMAGENET_RGB)
    again = build_dataset("msrvtt_ret", "train", cfg, tokenizer, IMAGENET_RGB)
    a, b, c = dataset[(2, 5)], again[(2, 5)], dataset[(3, 5)]
    assert a["input_ids"] == b["input_ids"] and torch.equal(a["frames"], b["frames"])
    assert a["input_ids"] != c["input_ids"] or not torch.equal(a["frames"], c["frames"])


def test_workers_do_not_change_the_batches(bench, tokenizer):
    batches = []
    for workers in (0, 2):
        cfg = make_cfg(bench, num_workers=workers)
        dataset = build_dataset("tgif_action", "train", cfg, tokenizer, IMAGENET_RGB)
        loader = build_loader(dataset, cfg, 3, True, rank=0, world_size=1)
        loader.sampler.set_epoch(2)
        batches.append(list(loader))
    for x, y in zip(*batches, strict=True):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["frames"], y["frames"])


def test_resume_mid_epoch_reproduces_the_remaining_batches(bench, tokenizer):
    cfg = make_cfg(bench)
    dataset = build_dataset("msrvtt_qa", "train", cfg, tokenizer, IMAGENET_RGB)
    loader = build_loader(dataset, cfg, 4, True, rank=0, world_size=1)
    loader.sampler.set_epoch(5)
    full = [b["index"] for b in loader]
    loader.sampler.set_epoch(5, batches_consumed=3)
    resumed = list(loader)
    assert len(resumed) == len(full) - 3
    for x, y in zip(full[3:], resumed, strict=True):
        assert torch.equal(x, y["index"])
    loader.sampler.set_epoch(6)
    assert len(list(loader)) == len(full)  # the skip applies to one epoch only


@pytest.mark.parametrize("size, world", [(10, 3), (7, 2), (2, 4)])
def test_sampler_shards_train_and_visits_eval_examples_once(size, world):
    train = [ShardedSampler(size, 2, True, seed=1, rank=r, world_size=world) for r in range(world)]
    for s in train:
        s.set_epoch(4)
    shards = [[i for _, i in s] for s in train]
    assert len({len(s) for s in shards}) == 1  # equal counts so ranks step together
    assert set().union(*map(set, shards)) == set(range(size))
    evals = [[i for _, i in ShardedSampler(size, 2, False, rank=r, world_size=world)] for r in range(world)]
    # exactly once, no padding duplicates; but no rank is left empty (ZeRO-3's forwards are collectives):
    # past the end of a set smaller than the world, a rank repeats example 0
    empty = max(0, world - size)
    assert sorted(sum(evals, [])) == [0] * empty + list(range(size))
    assert all(evals) and evals[size:] == [[0]] * empty
    again = ShardedSampler(size, 2, True, seed=1, rank=0, world_size=world)
    again.set_epoch(5)
    assert [i for _, i in again] != shards[0] or size <= 2


def test_frame_store_backend_gives_the_same_batch_layout(bench, tokenizer, tmp_path):
    from clipbert.data.build_frame_store import build_frame_store

    store = tmp_path / "frames.h5"
    build_frame_store(bench / "videos", store, fps=4.0, workers=0, progress=False)
    cfg = make_cfg(bench, backend="frame_store", frame_store=str(store))
    dataset = build_dataset("msrvtt_qa", "val", cfg, tokenizer, IMAGENET_RGB)
    batch = first_batch(dataset, cfg, train=False)
    check_common(batch, 2, 3, m=1)


def test_text_budget_truncates(bench, tokenizer):
    cfg = make_cfg(bench, max_text_len={"anet_ret": 5})
    data = build_dataset("anet_ret", "val", cfg, tokenizer, IMAGENET_RGB)
    assert data.input_ids.shape[1] == 5 and (data.input_ids[:, -1] == 102).all()  # ends with [SEP]


def test_unknown_task_or_split(bench, tokenizer):
    cfg = make_cfg(bench)
    with pytest.raises(ValueError, match="task must be one of"):
        build_dataset("msvd_qa", "train", cfg, tokenizer, IMAGENET_RGB)
    with pytest.raises(ValueError, match="split must be one of"):
        build_dataset("msrvtt_qa", "dev", cfg, tokenizer, IMAGENET_RGB)


def test_texts_sharing_a_video_decode_it_once(bench, tokenizer):
    cfg = make_cfg(bench)
    dataset = build_dataset("msrvtt_qa", "test", cfg, tokenizer, IMAGENET_RGB)
    calls = []
    decode = dataset.source.decoder.decode
    dataset.source.decoder.decode = lambda key, indices: calls.append(key) or decode(key, indices)
    loader = build_loader(dataset, cfg, 4, False, rank=0, world_size=1)
    batches = list(loader)
    videos = [v for b in batches for v in b["video_ids"]]
    assert len(videos) == len(dataset) > len(set(videos))  # several questions per video
    assert sorted(calls) == sorted({dataset.source.key(v) for v in videos})  # one decode per video
