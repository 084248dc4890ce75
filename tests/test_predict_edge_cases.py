"""`python -m clipbert.predict` on unusual but real inputs: odd file names and folders, very short videos,
blank, long and many texts, bad --json paths, edited predict.json files."""

import json
import os
import shutil

import pytest
import torch
from test_predict import _export

from clipbert.data.painted import write_audio_only, write_painted_video
from clipbert.predict.cli import main
from clipbert.predict.inputs import FileSource, clip_frames, expand_inputs
from clipbert.predict.loading import find_model_dir, load_predictor, read_run_settings
from clipbert.predict.scoring import encode_texts, score_answers
from clipbert.train.export import PREDICT_INFO
from clipbert.train.tasks import clip_aggregate

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ret_dir(bench, tmp_path_factory):
    return _export(tmp_path_factory.mktemp("ret"), bench, "msrvtt_ret", visual_word_loss=1.0)[1] / "model"


@pytest.fixture(scope="module")
def qa_dir(bench, tmp_path_factory):
    return _export(tmp_path_factory.mktemp("qa"), bench, "msrvtt_qa")[1] / "model"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Tiny painted videos at 10 fps: 0.3 s (3 frames), one frame, 3 s; and an audio-only .mp4."""

    folder = tmp_path_factory.mktemp("clips")
    paths = {
        name: write_painted_video(folder / name, frames, fps=10)
        for name, frames in (("short", 3), ("one", 1), ("normal", 30))
    }
    paths["audio"] = write_audio_only(folder / "audio.mp4")
    return paths


def _run(argv, tmp_path, capsys):
    """(exit code, the --json results or None, stdout, stderr) of one in-process run on the CPU."""
    out = tmp_path / "out.json"
    out.unlink(missing_ok=True)
    code = main([*argv, "--json", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    return code, json.loads(out.read_text()) if out.exists() else None, captured.out, captured.err


def _arg_error(argv, capsys) -> str:
    """stderr of a run that must stop with an argument error (exit 2)."""
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--device", "cpu"])
    assert stop.value.code == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------ inputs: names, folders, repeats
def test_an_existing_file_whose_name_looks_like_a_pattern_is_taken_as_it_is(clips, tmp_path):
    named = tmp_path / "[HD] clip.mp4"  # a glob would read [HD] as one of H or D
    shutil.copy(clips["normal"], named)
    shutil.copy(clips["short"], tmp_path / "H clip.mp4")
    assert expand_inputs([str(named)]) == ([str(named)], [])
    assert expand_inputs([str(tmp_path / "[H] clip.mp4")])[0] == [str(tmp_path / "H clip.mp4")]  # a pattern
    missing = str(tmp_path / "[4K] gone.mp4")
    assert expand_inputs([missing])[1][0].reason == "no such file, and as a pattern it matches no file"


def test_a_directorys_folders_and_broken_links_are_reported_not_dropped(clips, tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(clips["normal"], tmp_path / "top.mp4")
    shutil.copy(clips["normal"], tmp_path / "sub" / "inner.mp4")
    shutil.copy(clips["normal"], tmp_path / "sub" / "deeper" / "deep.mp4")
    (tmp_path / "broken.mp4").symlink_to(tmp_path / "gone.mp4")
    (tmp_path / ".hidden.mp4").write_bytes(b"")  # hidden files (.DS_Store, ._x.mp4) are not inputs
    files, skipped = expand_inputs([str(tmp_path)])
    assert files == [str(tmp_path / "broken.mp4"), str(tmp_path / "top.mp4")]  # the decoder reports the link
    assert [(s.path, s.reason.split(":")[0]) for s in skipped] == [
        (str(tmp_path / "sub"), "a folder, not searched")
    ]
    # `**` reaches every depth, as in a shell with globstar; the folders it matches are not listed
    files, skipped = expand_inputs([str(tmp_path / "**" / "*.mp4")])
    assert sorted(files) == sorted(
        str(tmp_path / p) for p in ("broken.mp4", "top.mp4", "sub/inner.mp4", "sub/deeper/deep.mp4")
    )
    assert skipped == []


def test_a_file_named_twice_is_scored_once_and_not_also_listed_as_skipped(clips, tmp_path, monkeypatch):
    shutil.copy(clips["normal"], tmp_path / "a.mp4")
    (tmp_path / "still.png").write_bytes(b"png")
    monkeypatch.chdir(tmp_path)
    files, skipped = expand_inputs([".", "./a.mp4", "a.mp4", "still.png", "./still.png"])
    assert files == ["a.mp4", "still.png"] and skipped == []  # the directory listed still.png as skipped
    files, skipped = expand_inputs([".", str(tmp_path), "*.png"])  # still.png: once, not three times
    assert files == ["a.mp4"] and [s.path for s in skipped] == ["still.png"]
    (tmp_path / "up").symlink_to(tmp_path)  # a link to a parent: `**` would follow it 40 times deep
    files, skipped = expand_inputs(["**/*.mp4"])
    assert files == ["a.mp4"] and skipped == []


# ------------------------------------------------------------------ very short and odd videos
def test_very_short_videos_repeat_their_edge_frames(clips, ret_dir):
    run = read_run_settings(ret_dir / PREDICT_INFO, None)
    source = FileSource(run.data, None)
    assert run.data.num_test_clips == 3 and run.data.test_sampling == "uniform"
    assert source.indices(clips["one"], 0).tolist() == [[0], [0], [0]]  # Ntest = 3 > 1 frame
    # 0.3 s: shorter than the 1 s clip, so each clip is frames 0..9 clamped to 0..2; T = 1 takes its centre
    assert source.indices(clips["short"], 0).tolist() == [[2], [2], [2]]
    assert source.indices(clips["normal"], 0).tolist() == [[4], [14], [24]]  # the centres of 3 clips


def test_rows_stay_aligned_with_names_when_videos_in_the_middle_are_skipped(clips, ret_dir, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    videos = [clips["normal"], str(corrupt), clips["short"], clips["audio"], clips["one"]]
    texts = ["--text", "a red circle", "--text", "a blue square moves"]
    argv = ["--model", str(ret_dir), *[f"--video={v}" for v in videos], *texts]
    code, out, stdout, _ = _run(argv, tmp_path, capsys)
    good = [clips["normal"], clips["short"], clips["one"]]
    assert code == 0 and out["videos"] == good
    assert {s["video"]: s["reason"] for s in out["skipped"]}[clips["audio"]] == "no video stream"
    assert "skipped 2 input(s), scored 3 video(s):" in stdout
    # the good videos alone, in the other order: each name keeps its row
    alone_argv = ["--model", str(ret_dir), *[f"--video={v}" for v in reversed(good)], *texts]
    _, alone, _, _ = _run(alone_argv, tmp_path, capsys)
    assert alone["videos"] == good[::-1]
    for key in ("scores", "match_log_prob", "word_score"):
        assert dict(zip(out["videos"], out[key])) == dict(zip(alone["videos"], alone[key]))
    assert len({tuple(row) for row in out["scores"]}) == 3  # the videos differ, so a shifted row would show


def test_a_file_name_that_is_not_utf8_is_printed_escaped(clips, ret_dir, tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    odd = os.path.join(str(folder), os.fsdecode(b"caf\xe9.mp4"))  # a Latin-1 name: a surrogate in Python
    try:
        shutil.copy(clips["normal"], odd)
    except OSError:  # a file system that stores UTF-8 names only (APFS): the case cannot arise there
        pytest.skip("this file system refuses a file name that is not UTF-8")
    shutil.copy(clips["short"], folder / "b.mp4")
    code, out, stdout, _ = _run(
        ["--model", str(ret_dir), "--video", str(folder), "--text", "a"], tmp_path, capsys
    )
    assert code == 0 and str(folder / "b.mp4") in out["videos"]  # stdout's encoder is strict UTF-8 here
    assert "caf\\udce9.mp4" in stdout and "b.mp4" in stdout
    reasons = {s["video"]: s["reason"] for s in out["skipped"]}
    assert reasons == {odd: "a file name that is not UTF-8, which the decoders cannot open: rename it"}


# ------------------------------------------------------------------ texts
@pytest.mark.parametrize("flag, value", [("--text", ""), ("--text", "  \t "), ("--question", "")])
def test_a_blank_text_or_question_is_an_argument_error(clips, ret_dir, qa_dir, capsys, flag, value):
    model = ret_dir if flag == "--text" else qa_dir
    argv = ["--model", str(model), "--video", clips["normal"], flag, "fine", flag, value]
    err = _arg_error(argv, capsys)
    assert f"{flag} number 2 is {'empty' if not value else 'blank'}" in err


def test_a_texts_file_not_in_utf8_is_an_argument_error_and_a_bom_is_dropped(clips, ret_dir, tmp_path, capsys):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café au lait\n".encode("latin-1"))
    err = _arg_error(
        ["--model", str(ret_dir), "--video", clips["normal"], "--texts-file", str(latin)], capsys
    )
    assert f"--texts-file {latin}: not UTF-8 text" in err
    bom = tmp_path / "bom.txt"
    bom.write_text("café au lait\n", encoding="utf-8-sig")  # as Windows editors save UTF-8
    argv = ["--model", str(ret_dir), "--video", clips["normal"], "--texts-file", str(bom)]
    code, out, _, _ = _run(argv, tmp_path, capsys)
    assert code == 0 and out["texts"] == ["café au lait"]


def test_texts_longer_than_the_model_reads_are_reported(clips, ret_dir, qa_dir, tmp_path, capsys):
    long = " ".join(["circle"] * 120)  # 122 tokens with [CLS] and [SEP]
    argv = ["--model", str(ret_dir), "--video", clips["normal"], "--text", long, "--text", "émoji 🎬 ok"]
    code, out, stdout, _ = _run(argv, tmp_path, capsys)
    assert code == 0 and out["max_text_len"] == 100
    assert out["truncated"] == [{"text": long, "tokens": 122}]
    assert "truncated 1 text(s) to the model's max_text_len=100 tokens" in stdout
    argv = ["--model", str(qa_dir), "--video", clips["normal"], "--question", long, "--question", "what?"]
    code, out, _, _ = _run(argv, tmp_path, capsys)
    assert code == 0 and out["truncated"] == [{"question": long, "tokens": 122}]


def test_many_questions_are_scored_in_text_batches_with_the_same_numbers(clips, qa_dir, monkeypatch):
    run = read_run_settings(qa_dir / PREDICT_INFO, None)
    predictor = load_predictor(run, find_model_dir(qa_dir), CPU, None)
    model = predictor.model
    frames = clip_frames(FileSource(run.data, predictor.norm), clips["normal"], CPU)  # [1, 3, 1, 3, L, L]
    questions = [f"what is in frame {i}?" for i in range(11)]
    with torch.no_grad():
        ids, mask = encode_texts(predictor, questions)
        expected = clip_aggregate(model(frames, ids[None], mask[None])[0], run.task.aggregation)  # [Q, K]
    widths, encodes = [], []
    score, encode = model.score, model.encode_visual
    monkeypatch.setattr(model, "score", lambda v, i, m: widths.append(i.shape[1]) or score(v, i, m))
    monkeypatch.setattr(model, "encode_visual", lambda f: encodes.append(1) or encode(f))
    got = score_answers(predictor, [(clips["normal"], frames)], questions)
    assert run.eval.text_batch == 4 and widths == [4, 4, 3] and len(encodes) == 1  # clips encoded once
    torch.testing.assert_close(got.log_probs[0], expected)


# ------------------------------------------------------------------ --json and the model dir
def test_a_json_path_that_cannot_be_a_file_is_refused_before_scoring(clips, ret_dir, tmp_path, capsys):
    argv = ["--model", str(ret_dir), "--video", clips["normal"], "--text", "a", "--device", "cpu"]
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--json", str(tmp_path)])
    assert stop.value.code == 2 and f"--json {tmp_path}: is a directory" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        main([*argv, "--json", str(tmp_path / "file" / "out.json")])
    assert f"cannot make its folder {tmp_path / 'file'}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--json", ""])  # an unset shell variable
    assert "--json '': an empty path" in capsys.readouterr().err
    nested = tmp_path / "new" / "folder" / "out.json"  # a missing folder is made; an existing file replaced
    assert main([*argv, "--json", str(nested)]) == 0 and main([*argv, "--json", str(nested)]) == 0
    assert json.loads(nested.read_text())["videos"] == [clips["normal"]]


def test_a_json_that_cannot_be_written_at_the_end_keeps_the_table(
    clips, ret_dir, tmp_path, capsys, monkeypatch
):
    from clipbert.predict import cli

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli.Path, "write_text", full_disk)
    argv = ["--model", str(ret_dir), "--video", clips["normal"], "--text", "a", "--device", "cpu"]
    assert main([*argv, "--json", str(tmp_path / "out.json")]) == 1
    captured = capsys.readouterr()
    assert (
        "best video per text:" in captured.out and "cannot write it (No space left on device)" in captured.err
    )


def _edited(ret_dir, tmp_path, edit):
    model = tmp_path / "edited"
    shutil.copytree(ret_dir, model)
    info = json.loads((model / PREDICT_INFO).read_text())
    edit(info)
    (model / PREDICT_INFO).write_text(json.dumps(info))
    return model


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda info: info.pop("task"), "missing task: an export's predict.json holds"),
        (lambda info: info["task"].pop("name"), "missing task.name"),
        (lambda info: info.update(train=None), "train: expected a JSON object, got NoneType"),
        (lambda info: info["visual_words"].pop("prior"), "visual_words: expected an object with word_ids"),
    ],
)
def test_an_edited_predict_json_exits_2_naming_the_key(clips, ret_dir, tmp_path, capsys, edit, message):
    model = _edited(ret_dir, tmp_path, edit)
    assert main(["--model", str(model), "--video", clips["normal"], "--text", "a", "--device", "cpu"]) == 2
    assert f"{model / PREDICT_INFO}: {message}" in capsys.readouterr().err


def test_the_header_says_one_clip_for_middle_sampling(clips, ret_dir, tmp_path, capsys):
    model = _edited(ret_dir, tmp_path, lambda info: info["data"].update(test_sampling="middle"))
    code, out, stdout, _ = _run(
        ["--model", str(model), "--video", clips["normal"], "--text", "a"], tmp_path, capsys
    )
    assert code == 0 and out["settings"]["num_test_clips"] == 1 and "1 clips x 1 frame(s)" in stdout


def test_a_pretrained_models_texts_keep_sep_and_pad_as_words_and_mask_as_the_mask(bench, tmp_path, capsys):
    from test_predict import _image

    out_dir = _export(tmp_path / "pretrain", bench, "pretrain")[1]
    # "[ sep ]" is the words "[", "sep", "]": what a typed [SEP] must be, as in the datasets
    texts = ["a red [SEP] circle [PAD] [MASK]", "a red [ sep ] circle [ pad ] [mask]"]
    argv = ["--model", str(out_dir), "--image", _image(bench, 0), *[f"--text={t}" for t in texts]]
    code, out, _, _ = _run(argv, tmp_path, capsys)
    assert code == 0 and out["scores"][0][0] == out["scores"][0][1]
    assert [len(fill["masks"]) for fill in out["fill_mask"]] == [1, 1]  # [MASK] in any case asks for fillers
    assert out["fill_mask"][0]["masks"] == out["fill_mask"][1]["masks"]


def test_many_texts_print_as_blocks_of_columns_that_hold_every_score(clips, ret_dir, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"a red circle number {q} moves left\n" for q in range(23)))
    videos = [clips["normal"], clips["short"]]
    argv = ["--model", str(ret_dir), *[f"--video={v}" for v in videos], "--texts-file", str(texts)]
    code, out, stdout, _ = _run(argv, tmp_path, capsys)
    assert code == 0 and [len(row) for row in out["scores"]] == [23, 23]
    headers = [line.split() for line in stdout.splitlines() if line.startswith("video ")]
    assert headers == [["video", *[f"t{q + 1}" for q in range(q0, min(q0 + 10, 23))]] for q0 in (0, 10, 20)]
    for name, row in zip(("normal.mp4", "short.mp4"), out["scores"]):
        cells = [line.split()[1:] for line in stdout.splitlines() if line.startswith(name + " ")]
        assert sum(cells, []) == [f"{x:.3f}" for x in row]  # every score, in text order
    assert max(len(line) for line in stdout.splitlines()) < 120


def test_a_model_file_given_for_the_model_dir_is_named_as_a_file(clips, ret_dir, capsys):
    weights = ret_dir / "model.safetensors"
    assert main(["--model", str(weights), "--video", clips["normal"], "--text", "a"]) == 2
    assert f"--model {weights}: is a file, not the export's directory" in capsys.readouterr().err


def test_a_flag_of_another_task_kind_names_the_flags_the_model_takes(clips, ret_dir, qa_dir, capsys):
    err = _arg_error(["--model", str(qa_dir), "--video", clips["normal"], "--text", "a red circle"], capsys)
    assert "--text is not used by a msrvtt_qa (qa) model: it takes --question" in err
    err = _arg_error(["--model", str(ret_dir), "--video", clips["normal"], "--option", "a"], capsys)
    assert "--option is not used by a msrvtt_ret (retrieval) model: it takes --text and --texts-file" in err


def test_a_reader_that_stops_early_does_not_make_a_traceback(clips, ret_dir, tmp_path, monkeypatch):
    import io
    import sys

    read, write = os.pipe()
    os.close(read)  # as `| head -1` does once it has its line
    with io.TextIOWrapper(io.FileIO(write, "w"), encoding="utf-8") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        argv = ["--model", str(ret_dir), "--video", clips["normal"], "--text", "a", "--device", "cpu"]
        assert main([*argv, "--json", str(tmp_path / "out.json")]) == 0
        monkeypatch.undo()
    assert json.loads((tmp_path / "out.json").read_text())["videos"] == [clips["normal"]]
