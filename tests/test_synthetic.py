"""Synthetic benchmark: determinism, real decodable files, annotation formats, and answers that match
what the decoded pixels show at the stated times."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

# PyAV is a hard dependency, but the GPU test machine runs `-m needs_cuda` without it: skip, not error.
av = pytest.importorskip("av", reason="PyAV is not installed")

from clipbert.data.synthetic import (  # noqa: E402
    PALETTE,
    VERSION,
    color_at,
    fully_visible,
    generate,
    not_ready_reason,
    object_by_id,
    positions,
    split_sizes,
)
from clipbert.data.synthetic import video as video_module  # noqa: E402
from clipbert.data.synthetic.__main__ import main as cli_main  # noqa: E402
from clipbert.data.synthetic.encode import rgb_to_yuv420  # noqa: E402
from clipbert.data.synthetic.render import render_frames  # noqa: E402
from clipbert.data.synthetic.scene import SIZE_PRESETS, build_scene, sample_attributes  # noqa: E402
from clipbert.data.synthetic.text import TEMPLATE_WORDS, event_phrase, full_caption, transition_item  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VOCAB = REPO / "clipbert" / "assets" / "bert-base-uncased-vocab.txt"
SPLITS = ("train", "val", "test")
RET_TASKS = ("msrvtt_ret", "didemo_ret", "anet_ret")
FIELDS = {
    "msrvtt_ret": {"caption", "clip_name"},
    "didemo_ret": {"clip_name", "duration", "sentences", "timestamps"},
    "anet_ret": {"clip_name", "duration", "sentences", "timestamps"},
    "msrvtt_qa": {"question", "answer", "video_id", "answer_type", "question_id"},
    "tgif_frameqa": {"question", "answer", "gif_name", "answer_type", "question_id"},
    "tgif_action": {"question", "options", "answer", "gif_name", "question_id"},
    "tgif_transition": {"question", "options", "answer", "gif_name", "question_id"},
    "msrvtt_mc": {"qid", "clip_name", "options", "answer"},
    "pretrain": {"image_id", "caption", "file"},
}
VIDEO_KEY = {
    "msrvtt_ret": "clip_name",
    "didemo_ret": "clip_name",
    "anet_ret": "clip_name",
    "msrvtt_qa": "video_id",
    "tgif_frameqa": "gif_name",
    "tgif_action": "gif_name",
    "tgif_transition": "gif_name",
    "msrvtt_mc": "clip_name",
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, num_videos=12, seed=3, codec="h264", size="tiny", workers=1)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def scenes(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "ground_truth").glob("*.json"))}


def tree_digest(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def decode_all(path: Path) -> tuple[np.ndarray, av.video.stream.VideoStream]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])  # [F, H, W, 3]
        return frames, stream


def nearest_palette(rgb: np.ndarray) -> str:
    names = list(PALETTE)
    dist = [np.abs(rgb.astype(np.float64) - np.asarray(PALETTE[n], np.float64)).sum() for n in names]
    return names[int(np.argmin(dist))]


def patch_mean(frame: np.ndarray, x: float, y: float) -> np.ndarray:
    """Mean colour of the 3x3 pixels at (x, y): inside every shape's core, away from chroma-blurred edges."""
    xi, yi = int(x), int(y)
    return frame[yi - 1 : yi + 2, xi - 1 : xi + 2].reshape(-1, 3).mean(axis=0)


# ---------------------------------------------------------------- determinism and files


@pytest.mark.parametrize("codec", ["h264", "vp9", "mjpeg"])
def test_same_seed_same_bytes_any_worker_count(tmp_path, codec):
    meta_a = generate(tmp_path / "a", num_videos=4, seed=11, codec=codec, size="tiny", workers=1)
    meta_b = generate(tmp_path / "b", num_videos=4, seed=11, codec=codec, size="tiny", workers=2)
    assert meta_a == meta_b
    digest_a, digest_b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert digest_a == digest_b  # videos, images, ground truth and annotations byte for byte
    ext = {"h264": ".mp4", "vp9": ".webm", "mjpeg": ".avi"}[codec]
    videos = sorted((tmp_path / "a" / "videos").iterdir())
    assert len(videos) == 4 and all(v.suffix == ext for v in videos)
    for path in videos:
        scene = json.loads((tmp_path / "a" / "ground_truth" / f"{path.stem}.json").read_text())
        frames, stream = decode_all(path)
        assert frames.shape == (scene["num_frames"], scene["height"], scene["width"], 3), path.name
        assert stream.average_rate == scene["fps"], path.name


def test_other_seed_changes_content(tmp_path, bench):
    generate(tmp_path, num_videos=12, seed=4, size="tiny", workers=1)
    a = (bench / "annotations" / "msrvtt_ret_train.jsonl").read_text()
    assert (tmp_path / "annotations" / "msrvtt_ret_train.jsonl").read_text() != a


def test_every_video_decodes_to_declared_geometry(bench):
    gts = scenes(bench)
    assert len(gts) == 12
    for vid, scene in gts.items():
        path = bench / scene["file"]
        assert path.suffix == ".mp4" and path.exists(), path
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert stream.average_rate == scene["fps"]
            n = sum(1 for _ in container.decode(stream))
            assert (stream.codec_context.width, stream.codec_context.height) == (
                scene["width"],
                scene["height"],
            )
        assert n == scene["num_frames"], vid
        assert scene["duration"] == pytest.approx(n / scene["fps"]) and scene["duration"] >= 3.0


def test_default_preset_varies_length_rate_and_shape():
    rng = np.random.default_rng(0)
    built = [build_scene(rng, f"v{i}", sample_attributes(rng), "default", "h264") for i in range(300)]
    durations = np.array([s["duration"] for s in built])
    assert durations.min() >= 3.0 and durations.max() <= 30.0 + 1 / 15 and durations.max() > 20
    assert {s["fps"] for s in built} == set(SIZE_PRESETS["default"]["fps"])
    assert all(15 <= s["fps"] <= 30 and s["width"] % 2 == 0 and s["height"] % 2 == 0 for s in built)
    aspects = {round(s["width"] / s["height"], 2) for s in built}
    assert any(a < 1 for a in aspects) and any(a not in (1.0, 1.33) for a in aspects if a > 1)


def test_bad_arguments_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="codec 'h265'"):
        generate(tmp_path, 3, codec="h265", size="tiny")
    with pytest.raises(ValueError, match="size 'huge'"):
        generate(tmp_path, 3, size="huge")
    with pytest.raises(ValueError, match="num_videos=2"):
        generate(tmp_path, 2, size="tiny")


def test_cli_writes_meta(tmp_path, capsys):
    meta = cli_main(
        ["--out", str(tmp_path), "--num-videos", "3", "--seed", "5", "--size", "tiny", "--workers", "1"]
    )
    assert json.loads((tmp_path / "meta.json").read_text()) == meta
    assert meta["args"] == {"num_videos": 3, "seed": 5, "codec": "h264", "size": "tiny"}
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["videos"] == {
        "train": 1,
        "val": 1,
        "test": 1,
    }


@pytest.mark.parametrize(
    "argv, flag",
    [(["--num-videos", "2"], "--num-videos"), (["--workers", "0"], "--workers"), (["--seed", "x"], "--seed")],
)
def test_cli_rejects_bad_flags_by_name(tmp_path, capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--out", str(tmp_path / "out"), "--size", "tiny", *argv])
    assert exit_info.value.code == 2 and f"argument {flag}:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # rejected before anything is written


def test_cli_rejects_an_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--out", str(tmp_path / "file"), "--size", "tiny", "--num-videos", "3"])
    assert exit_info.value.code == 2 and "argument --out:" in capsys.readouterr().err


def test_every_split_has_a_video():
    for n in range(3, 400):
        sizes = split_sizes(n)
        assert sum(sizes.values()) == n and min(sizes.values()) >= 1, (n, sizes)
    with pytest.raises(ValueError, match="num_videos=2"):
        split_sizes(2)


def test_a_finished_benchmark_is_ready_until_something_changes(tmp_path):
    meta = generate(tmp_path, num_videos=3, seed=0, size="tiny", workers=1)
    assert meta["version"] == VERSION
    assert not_ready_reason(tmp_path, 3, 0, "h264", "tiny") is None
    assert "want" in not_ready_reason(tmp_path, 4, 0, "h264", "tiny")
    meta_path = tmp_path / "meta.json"
    text = meta_path.read_text()
    meta_path.write_text(text[: len(text) // 2])  # cut off
    assert "cut off" in not_ready_reason(tmp_path, 3, 0, "h264", "tiny")
    meta_path.write_text(json.dumps({**meta, "version": VERSION - 1}))
    assert f"version {VERSION - 1}" in not_ready_reason(tmp_path, 3, 0, "h264", "tiny")
    meta_path.write_text(text)
    (tmp_path / "videos" / "video0001.mp4").unlink()
    assert "videos/video0001.mp4" in not_ready_reason(tmp_path, 3, 0, "h264", "tiny")


def test_a_cut_off_generation_leaves_no_ready_benchmark_nor_a_partial_video(tmp_path, monkeypatch):
    generate(tmp_path, num_videos=3, seed=0, size="tiny", workers=1)
    first = (tmp_path / "videos" / "video0000.mp4").read_bytes()
    real_write = video_module.write_video

    def cut_off(path, chunks, fps, codec):  # the encoder is killed halfway through the first video
        real_write(path, chunks, fps, codec)
        Path(path).write_bytes(Path(path).read_bytes()[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(video_module, "write_video", cut_off)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path, num_videos=3, seed=0, size="tiny", workers=1)
    assert "missing" in not_ready_reason(tmp_path, 3, 0, "h264", "tiny")
    assert (tmp_path / "videos" / "video0000.mp4").read_bytes() == first  # not the cut-off file
    monkeypatch.undo()
    generate(tmp_path, num_videos=3, seed=0, size="tiny", workers=1)
    assert not_ready_reason(tmp_path, 3, 0, "h264", "tiny") is None
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == [f"video000{i}.mp4" for i in range(3)]


# ---------------------------------------------------------------- annotations


def test_splits_disjoint_and_complete(bench):
    splits = json.loads((bench / "annotations" / "splits.json").read_text())
    ids = [v for s in SPLITS for v in splits[s]]
    assert len(ids) == len(set(ids)) == 12
    assert set(ids) == set(scenes(bench))
    assert all(splits[s] for s in SPLITS)
    for vid, scene in scenes(bench).items():
        assert vid in splits[scene["split"]]


def test_annotation_files_parse_and_reference_existing_files(bench):
    ann = bench / "annotations"
    splits = {s: set(v) for s, v in json.loads((ann / "splits.json").read_text()).items()}
    meta = json.loads((bench / "meta.json").read_text())
    for task, key in VIDEO_KEY.items():
        for split in ["test"] if task == "msrvtt_mc" else SPLITS:
            rows = read_jsonl(ann / f"{task}_{split}.jsonl")
            assert len(rows) == meta["counts"][task][split], (task, split)
            for row in rows:
                assert set(row) == FIELDS[task], (task, row)
                assert row[key] in splits[split], (task, split, row[key])  # no video crosses splits
                vids = list((bench / "videos").glob(f"{row[key]}.*"))
                assert len(vids) == 1, row[key]
    for split in ("train", "val"):
        rows = read_jsonl(ann / f"pretrain_{split}.jsonl")
        assert rows and len(rows) == meta["counts"]["pretrain"][split]
        for row in rows:
            assert set(row) == FIELDS["pretrain"] and row["file"] == f"images/{row['image_id']}.jpg"
            assert (bench / row["file"]).read_bytes()[:2] == b"\xff\xd8"  # JPEG magic
            assert row["image_id"].rsplit("_", 1)[0] in splits[split]


def test_vqa_files_ask_about_existing_stills_and_test_has_no_answers(bench):
    ann = bench / "annotations"
    meta = json.loads((bench / "meta.json").read_text())
    stills = {
        s: {r["image_id"]: r for r in read_jsonl(ann / f"pretrain_{s}.jsonl")} for s in ("train", "val")
    }
    rows = {s: read_jsonl(ann / f"vqa_{s}.jsonl") for s in SPLITS}
    for split in SPLITS:
        assert rows[split] and len(rows[split]) == meta["counts"]["vqa"][split]
        for row in rows[split]:
            image = stills["train" if split == "train" else "val"][row["image_id"]]  # test = val's questions
            assert row["file"] == image["file"] and (bench / row["file"]).is_file()
            assert ("answers" in row) == (split != "test")
    ids = [r["question_id"] for s in ("train", "val") for r in rows[s]]
    assert len(set(ids)) == len(ids)
    assert [r["question_id"] for r in rows["test"]] == [r["question_id"] for r in rows["val"]]


def test_vqa_majority_answer_is_what_the_still_shows(bench):
    from clipbert.data.vqa_answers import answer_scores

    labels = json.loads((bench / "annotations" / "vqa_ans2label.json").read_text())
    partial = 0
    for split in ("train", "val"):
        for row, scene, t, main in still_rows(bench, "vqa", split):
            scores = answer_scores(row["answers"])
            best = max(scores, key=scores.__getitem__)
            assert len(row["answers"]) == 10 and scores[best] >= 0.9, row  # the truth has 3+ votes
            partial += any(0 < v < 0.9 for v in scores.values())
            words = row["question"].split()
            if row["question"].startswith("what color"):
                assert best == color_at(main, t) and words[-1] == main["shape"]
            elif row["question"].startswith("what shape"):
                assert best == main["shape"] and words[4] == color_at(main, t)
            elif row["question"].startswith("how many"):
                distractors = sum(o["role"] == "distractor" for o in scene["objects"])
                assert best == str(distractors)
            else:  # "is there a <colour> <shape>": yes only for a coloured object fully in view
                shown = {
                    (color_at(o, t), o["shape"])
                    for o in scene["objects"]
                    if o["role"] != "distractor" and fully_visible(o, scene, np.array([t]))[0]
                }
                assert best == ("yes" if tuple(words[-2:]) in shown else "no"), row
            if split == "train":
                assert best in labels
    assert partial  # some wrong answers carry partial credit (soft targets)


def test_retrieval_captions_per_video(bench):
    ann = bench / "annotations"
    gts = scenes(bench)
    train = read_jsonl(ann / "msrvtt_ret_train.jsonl")
    per_video = {}
    for row in train:
        per_video.setdefault(row["clip_name"], []).append(row["caption"])
    assert all(len(c) >= 3 and len(set(c)) == len(c) for c in per_video.values())
    for split in ("val", "test"):
        rows = read_jsonl(ann / f"msrvtt_ret_{split}.jsonl")
        assert len({r["clip_name"] for r in rows}) == len(rows)  # one caption per video
        for row in rows:
            scene = gts[row["clip_name"]]
            a = scene["attributes"]
            assert row["caption"] == full_caption(scene)
            for word in (a["color"], a["shape"], a["direction"], a["speed"]):
                assert word in row["caption"].split()


def test_every_word_is_one_bert_token(bench):
    vocab = set(VOCAB.read_text().split("\n"))
    assert not set(TEMPLATE_WORDS) - vocab
    used = set()
    for path in (bench / "annotations").glob("*.jsonl"):
        for row in read_jsonl(path):
            for key in ("caption", "question", "answer"):
                if isinstance(row.get(key), str):
                    used.update(row[key].split())
            for key in ("options", "sentences"):
                for text in row.get(key, []):
                    used.update(text.split())
    assert used and used <= set(TEMPLATE_WORDS), used - set(TEMPLATE_WORDS)


def test_multiple_choice_items(bench):
    ann = bench / "annotations"
    gts = scenes(bench)
    for row in read_jsonl(ann / "msrvtt_mc_test.jsonl"):
        assert len(row["options"]) == 5 == len(set(row["options"]))
        assert row["options"][row["answer"]] == full_caption(gts[row["clip_name"]])
    for split in SPLITS:
        for row in read_jsonl(ann / f"tgif_action_{split}.jsonl"):
            a = gts[row["gif_name"]]["attributes"]
            assert len(set(row["options"])) == 5
            assert row["options"][row["answer"]] == f"move {a['direction']} {a['speed']}"
        for row in read_jsonl(ann / f"tgif_transition_{split}.jsonl"):
            scene = gts[row["gif_name"]]
            events = [e["type"] for e in scene["events"]]
            assert events and len(set(row["options"])) == 5
            # the event after the one the question names (or the only one); no option is named in it
            assert row["options"][row["answer"]] == event_phrase(events[-1], scene["attributes"])
            assert not any(option in row["question"] for option in row["options"])


def _transition_items(seed: int, num_videos: int) -> list[tuple[str, list[str], int]]:
    """tgif_transition items of `num_videos` scenes (no rendering: the items need only the events)."""
    rng, task_rng = np.random.default_rng(seed), np.random.default_rng([seed, 3])
    scenes = [build_scene(rng, f"v{i}", sample_attributes(rng), "tiny", "h264") for i in range(num_videos)]
    return [item for item in (transition_item(sc, task_rng) for sc in scenes) if item is not None]


def _form_and_type(question: str, option: str) -> tuple[str, str]:
    """The event the question names ('moves' for none) and the option's: turns / enters / leaves."""
    named = question.split()[-1] if question.endswith(("enters", "leaves")) else question.split()[-2]
    return named, "turns" if " turns " in option else option.split()[-1]


def _text_only_accuracy(fit: list, scored: list, key) -> float:
    """Pick the option whose key was most often the answer among the options of `fit`; accuracy on
    `scored`."""
    right, seen = Counter(), Counter()
    for question, options, answer in fit:
        for k, option in enumerate(options):
            seen[key(question, option)] += 1
            right[key(question, option)] += k == answer
    hits = 0
    for question, options, answer in scored:
        rates = [right[key(question, o)] / max(seen[key(question, o)], 1) for o in options]
        hits += int(np.argmax(rates)) == answer
    return hits / len(scored)


def test_transition_options_do_not_give_the_answer_away():
    """Text-only guesses, fitted on one set and scored on another, stay near the 20% of chance. With the
    wrong options drawn from a fixed pool, guessing by how often an option string was the answer scored 42%,
    by the event types of the question and of the option 46% (42% of the true options were a colour change,
    13% of the wrong ones), and the first of two events, named in the question, was always a wrong option."""
    fit, scored = _transition_items(0, 2000), _transition_items(1, 2000)
    assert len(scored) > 1500
    assert _text_only_accuracy(fit, scored, lambda q, o: o) < 0.25
    assert _text_only_accuracy(fit, scored, _form_and_type) < 0.25
    frequent = Counter(option for _, options, _ in fit for option in options)
    hits = [int(np.argmax([frequent[o] for o in options])) == a for _, options, a in scored]
    assert np.mean(hits) < 0.25


def test_qa_answers_match_ground_truth(bench):
    ann = bench / "annotations"
    gts = scenes(bench)
    for task in ("msrvtt_qa", "tgif_frameqa"):
        labels = json.loads((ann / f"{task}_ans2label.json").read_text())
        assert sorted(labels.values()) == list(range(len(labels)))
        train_answers = {r["answer"] for r in read_jsonl(ann / f"{task}_train.jsonl")}
        assert train_answers == set(labels)
    for split in SPLITS:
        for row in read_jsonl(ann / f"msrvtt_qa_{split}.jsonl"):
            scene = gts[row["video_id"]]
            a, q = scene["attributes"], row["question"]
            if q.startswith("which way"):
                assert row["answer"] == scene["objects"][0]["motion"]["direction"] == a["direction"]
            if row["answer_type"] == "when":
                kind = "color_change" if " turn " in q else ("enter" if q.endswith("enter") else "leave")
                (event,) = [e for e in scene["events"] if e["type"] == kind]
                assert row["answer"] == ("early" if event["time"] < scene["duration"] / 2 else "late")
            if q.startswith("how many colored"):
                t_end = np.array([(scene["num_frames"] - 1) / scene["fps"]])
                present = sum(
                    bool(positions(o, scene, t_end)[2][0])
                    for o in scene["objects"]
                    if o["role"] != "distractor"
                )
                assert row["answer"] == {1: "one", 2: "two"}[present]
        for row in read_jsonl(ann / f"tgif_frameqa_{split}.jsonl"):
            scene = gts[row["gif_name"]]
            if row["answer_type"] == "number":
                n = sum(o["role"] == "distractor" for o in scene["objects"])
                assert row["answer"] == ["zero", "one", "two", "three", "four", "five"][n]


def test_meta_chance_levels(bench):
    meta = json.loads((bench / "meta.json").read_text())
    splits = json.loads((bench / "annotations" / "splits.json").read_text())
    for task in RET_TASKS:
        assert meta["chance"][task]["test"] == pytest.approx(1 / len(splits["test"]))
    for task in ("tgif_action", "tgif_transition", "msrvtt_mc"):
        assert meta["chance"][task]["test"] == pytest.approx(0.2)
    for task in ("msrvtt_qa", "tgif_frameqa"):
        labels = json.loads((bench / "annotations" / f"{task}_ans2label.json").read_text())
        assert meta["chance"][task]["uniform"] == pytest.approx(1 / len(labels))
        assert 0 <= meta["chance"][task]["test"] <= 1
    labels = json.loads((bench / "annotations" / "vqa_ans2label.json").read_text())
    assert meta["chance"]["vqa"]["uniform"] == pytest.approx(1 / len(labels))
    assert 0 < meta["chance"]["vqa"]["val"] < 1


# ---------------------------------------------------------------- temporal answers vs decoded pixels


def visible_frames(scene: dict, obj: dict, lo: float, hi: float) -> list[int]:
    """Frames in [lo, hi) s where `obj` is fully in view and not covered by another coloured object."""
    idx = np.arange(scene["num_frames"])
    t = idx / scene["fps"]
    ok = (t >= lo) & (t < hi) & fully_visible(obj, scene, t)
    x, y, _ = positions(obj, scene, t)
    for other in scene["objects"]:
        if other is obj or other["role"] == "distractor":
            continue
        ox, oy, present = positions(other, scene, t)
        far = np.hypot(ox - x, oy - y) > 1.5 * (obj["radius"] + other["radius"])
        if other["role"] == "main":  # the main object is painted on top of everything
            ok &= far | ~present
    return [int(i) for i in idx[ok]]


def test_colour_changes_visible_at_stated_time(bench):
    checked = 0
    for scene in scenes(bench).values():
        frames, _ = decode_all(bench / scene["file"])
        main = object_by_id(scene, "main")
        for event in [e for e in scene["events"] if e["type"] == "color_change"]:
            t = event["time"]
            before = visible_frames(scene, main, 0.0, t)
            after = visible_frames(scene, main, t, scene["duration"])
            for frame_ids, expected in ((before[-3:], event["from"]), (after[:3], event["to"])):
                for i in frame_ids:
                    x, y, _ = positions(main, scene, np.array([i / scene["fps"]]))
                    assert nearest_palette(patch_mean(frames[i], x[0], y[0])) == expected, (
                        scene["video_id"],
                        i,
                    )
                    checked += 1
    assert checked >= 6


def test_second_object_enters_and_leaves_at_stated_time(bench):
    checked = 0
    for scene in scenes(bench).values():
        events = [e for e in scene["events"] if e["type"] in ("enter", "leave")]
        if not events:
            continue
        frames, _ = decode_all(bench / scene["file"])
        second, main = object_by_id(scene, "second"), object_by_id(scene, "main")
        (event,) = events
        rx, ry = second["motion"]["rest"]
        color = second["colors"][0]["name"]
        t = np.arange(scene["num_frames"]) / scene["fps"]
        mx, my, _ = positions(main, scene, t)
        clear = np.hypot(mx - rx, my - ry) > 1.5 * (main["radius"] + second["radius"])  # main not on top
        at_rest_before = clear & (t < event["time"] - 0.1)
        at_rest_after = clear & (t >= event["end_time"] + 0.1)
        shown = at_rest_after if event["type"] == "enter" else at_rest_before
        hidden = at_rest_before if event["type"] == "enter" else at_rest_after
        for i in np.flatnonzero(shown)[:3]:
            assert nearest_palette(patch_mean(frames[i], rx, ry)) == color, (scene["video_id"], i)
            checked += 1
        for i in np.flatnonzero(hidden)[:3]:
            dist = np.abs(patch_mean(frames[i], rx, ry) - np.asarray(PALETTE[color])).sum()
            assert dist > 120, (scene["video_id"], i, "object visible where the ground truth says it is gone")
            checked += 1
    assert checked >= 4


def test_motion_direction_measured_from_pixels(bench):
    """The stated direction is what the colour centroid does over 0.2 s: a two-frame cue inside one second."""
    checked = 0
    for scene in scenes(bench).values():
        frames, _ = decode_all(bench / scene["file"])
        main = object_by_id(scene, "main")
        fps, step = scene["fps"], max(1, round(0.2 * scene["fps"]))
        vis = set(visible_frames(scene, main, 0.0, scene["duration"]))
        pairs = [(i, i + step) for i in sorted(vis) if i + step in vis]
        pairs = [(i, j) for i, j in pairs if color_at(main, i / fps) == color_at(main, j / fps)]
        # The centroid is of all pixels of the main colour: skip frames where the second object shares it.
        seconds = [o for o in scene["objects"] if o["role"] == "second"]
        pairs = [
            (i, j) for i, j in pairs if all(color_at(main, i / fps) != color_at(o, 0.0) for o in seconds)
        ][:2]
        for i, j in pairs:
            rgb = np.asarray(PALETTE[color_at(main, i / fps)], np.float64)
            cents = []
            for k in (i, j):
                close = np.abs(frames[k].astype(np.float64) - rgb).sum(-1) < 90  # [H, W]
                ys, xs = np.nonzero(close)
                cents.append(np.array([xs.mean(), ys.mean()]))
            move = cents[1] - cents[0]
            if abs(move[0]) > abs(move[1]):
                measured = "right" if move[0] > 0 else "left"
            else:
                measured = "down" if move[1] > 0 else "up"
            assert measured == main["motion"]["direction"], (scene["video_id"], i, move)
            checked += 1
    assert checked >= 8


def test_paragraph_timestamps_follow_events(bench):
    gts = scenes(bench)
    for task in ("didemo_ret", "anet_ret"):
        for split in SPLITS:
            for row in read_jsonl(bench / "annotations" / f"{task}_{split}.jsonl"):
                scene = gts[row["clip_name"]]
                times = [e["time"] for e in scene["events"]]
                assert [s for s, _ in row["timestamps"]] == [0.0] + times
                assert (
                    row["timestamps"][-1][1] == row["duration"] == pytest.approx(scene["duration"], abs=1e-3)
                )
                assert len(row["sentences"]) == len(row["timestamps"]) == 1 + len(times)


def still_rows(bench: Path, task: str, split: str):
    """(row, scene, time, main object) of each line about a still (image ids are <video>_<frame>)."""
    gts = scenes(bench)
    for row in read_jsonl(bench / "annotations" / f"{task}_{split}.jsonl"):
        vid, frame = row["image_id"].rsplit("_", 1)
        scene = gts[vid]
        yield row, scene, int(frame) / scene["fps"], object_by_id(scene, "main")


def test_pretrain_captions_match_the_image(bench):
    from PIL import Image

    for split in ("train", "val"):
        for row, scene, t, main in still_rows(bench, "pretrain", split):
            img = np.asarray(Image.open(bench / row["file"]).convert("RGB"))
            assert img.shape == (scene["height"], scene["width"], 3)
            x, y, _ = positions(main, scene, np.array([t]))
            assert nearest_palette(patch_mean(img, x[0], y[0])) == color_at(main, t)
            assert row["caption"].split()[:4] == ["a", main["size"], color_at(main, t), main["shape"]]


@pytest.mark.parametrize("full_range", [False, True])
def test_yuv420_conversion_matches_float64_bt601(full_range):
    """Frame 6x10 (half-height 3 is odd), random pixels: integer planes vs float64 BT.601 within 1 level."""
    rng = np.random.default_rng(0)
    chunk = rng.integers(0, 256, (2, 6, 10, 3), dtype=np.uint8)
    out = rgb_to_yuv420(chunk, full_range)  # [2, 9, 10]
    assert out.shape == (2, 9, 10) and out.dtype == np.uint8
    x = chunk.astype(np.float64)
    if full_range:  # JPEG: Y in 0..255
        m, y_off = (
            np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]),
            0,
        )
    else:  # video: Y in 16..235, Cb/Cr in 16..240
        m = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255
        y_off = 16
    y_ref = x @ m[0] + y_off  # [2, 6, 10]
    block = x.reshape(2, 3, 2, 5, 2, 3).mean(axis=(2, 4))  # [2, 3, 5, 3]
    cb_ref, cr_ref = block @ m[1] + 128, block @ m[2] + 128
    flat = out.reshape(2, -1).astype(np.float64)
    np.testing.assert_allclose(flat[:, :60].reshape(2, 6, 10), y_ref, atol=1.0)
    np.testing.assert_allclose(flat[:, 60:75].reshape(2, 3, 5), cb_ref, atol=1.0)
    np.testing.assert_allclose(flat[:, 75:].reshape(2, 3, 5), cr_ref, atol=1.0)
    # PyAV reads the planes where we put them: a flat colour survives the round trip.
    flat_rgb = np.broadcast_to(np.array([200, 40, 90], np.uint8), (1, 6, 10, 3))
    fmt = "yuvj420p" if full_range else "yuv420p"
    back = av.VideoFrame.from_ndarray(rgb_to_yuv420(flat_rgb, full_range)[0], format=fmt).to_ndarray(
        format="rgb24"
    )
    assert np.abs(back.astype(int) - flat_rgb[0]).max() <= 3


def test_decoded_video_matches_rgb_render(bench):
    """The encoder input (painted in YUV) and the RGB renderer (stills, tests) show the same picture."""
    for scene in list(scenes(bench).values())[:4]:
        frames, _ = decode_all(bench / scene["file"])
        picks = np.array([0, scene["num_frames"] // 2, scene["num_frames"] - 1])
        rendered = render_frames(scene, picks).astype(np.float64)  # [3, H, W, 3]
        err = np.abs(frames[picks].astype(np.float64) - rendered)
        assert err.mean() < 3.5, (scene["video_id"], err.mean())
        assert np.percentile(err, 95) < 10, (scene["video_id"], np.percentile(err, 95))


def test_regenerating_in_place_leaves_one_benchmark(tmp_path):
    generate(tmp_path, num_videos=5, seed=0, codec="mjpeg", size="tiny", workers=1)
    (tmp_path / "videos" / "notes.txt").write_text("not ours")
    generate(tmp_path, num_videos=3, seed=0, codec="h264", size="tiny", workers=1)
    videos = sorted(p.name for p in (tmp_path / "videos").iterdir())
    assert videos == ["notes.txt", "video0000.mp4", "video0001.mp4", "video0002.mp4"]
    assert len(list((tmp_path / "ground_truth").iterdir())) == 3
    kept = {
        r["file"]
        for s in ("train", "val")
        for r in read_jsonl(tmp_path / "annotations" / f"pretrain_{s}.jsonl")
    }
    assert {f"images/{p.name}" for p in (tmp_path / "images").iterdir()} == kept


def test_a_key_frame_every_second(bench):
    """Sparse sampling seeks to random times; a key frame per second bounds what each seek decodes."""
    for scene in list(scenes(bench).values())[:3]:
        with av.open(str(bench / scene["file"])) as container:
            keys = [p.pts for p in container.demux(video=0) if p.is_keyframe and p.pts is not None]
            stream = container.streams.video[0]
            seconds = sorted(float(pts * stream.time_base) for pts in keys)
        duration = scene["num_frames"] / scene["fps"]
        assert seconds[0] == 0.0
        assert max(np.diff(seconds + [duration])) <= 1.0 + 1e-6, (scene["video_id"], seconds)
