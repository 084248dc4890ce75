"""The training config: shipped configs load, bad keys and values fail naming the full key, --set parsing."""

import json
import os
import subprocess
import sys

import pytest
import torch

from clipbert.train import config as C

SHIPPED = sorted(p.stem for p in C.CONFIG_DIR.glob("ds_*.json"))
# a Hugging Face BERT config.json of other sizes than the presets' (init_bert_from takes its sizes)
SMALL_HF_BERT = {
    "vocab_size": 30522,
    "hidden_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 3,
    "intermediate_size": 192,
    "hidden_act": "gelu",
    "max_position_embeddings": 128,
    "layer_norm_eps": 1e-12,
}


def test_every_paper_config_is_shipped():
    expected = {
        "ds_msrvtt",
        "ds_didemo",
        "ds_anet",
        "ds_tgif_action",
        "ds_tgif_transition",
        "ds_tgif_frameqa",
        "ds_msrvtt_qa",
        "ds_msrvtt_mc",
        "ds_vqa",
        "ds_pretrain",
        "ds_synthetic",
    }
    assert expected <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name):
    cfg = C.load(f"{name}.json")  # a bare name is looked up in configs/
    assert cfg.model_config().image_size == cfg.data.image_size
    json.dumps(cfg.to_dict())  # the resolved config is JSON-serializable (written to output_dir/config.json)


def test_msrvtt_config_matches_the_paper():
    cfg = C.load("ds_msrvtt")
    assert (cfg.data.image_size, cfg.data.num_clips, cfg.data.frames_per_clip) == (448, 8, 2)
    assert (cfg.data.num_test_clips, cfg.task.aggregation) == (16, "lse")
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.batch_size, cfg.train.betas) == (
        5e-5,
        20,
        16,
        [0.9, 0.98],
    )
    assert C.precision(cfg.deepspeed) == "bf16"
    assert cfg.model_config().hidden_size == 768


def test_pretrain_and_vqa_configs_match_the_paper():
    pre = C.load("ds_pretrain")
    assert (pre.data.image_size, pre.data.max_text_len["pretrain"]) == (768, 22)  # 20 tokens + [CLS], [SEP]
    assert (pre.data.mlm_prob, pre.data.itm_neg_prob, pre.train.betas) == (0.15, 0.5, [0.9, 0.98])
    assert pre.model_config().pixel_random_sampling_size == 100
    vqa = C.load("ds_vqa")
    assert (vqa.data.image_size, vqa.data.num_clips, vqa.data.frames_per_clip) == (448, 1, 1)  # 1x1
    assert vqa.model_config(num_answers=3129).num_classes == 3129
    assert vqa.train.init_checkpoint  # fine-tuned from the image-text pre-trained weights


@pytest.mark.parametrize(
    "name, epochs, batch, accum, lr",
    [
        ("ds_didemo", 20, 8, 4, 5e-5),
        ("ds_anet", 80, 16, 2, 5e-5),
        ("ds_tgif_action", 55, 32, 1, 1e-4),
        ("ds_tgif_transition", 15, 32, 1, 1e-4),
        ("ds_tgif_frameqa", 15, 32, 1, 1e-4),
        ("ds_msrvtt_qa", 10, 16, 1, 5e-5),
        ("ds_vqa", 13, 32, 2, 5e-5),  # Appendix A; accum: the original's (test_configs_original.py)
        ("ds_pretrain", 40, 32, 4, 5e-5),  # Section 3; accum: the original's (test_configs_original.py)
    ],
)
def test_paper_tables_10_and_11(name, epochs, batch, accum, lr):
    t = C.load(name).train
    assert (t.epochs, t.batch_size, t.grad_accum, t.lr) == (epochs, batch, accum, lr)


def test_unknown_key_names_the_full_key_and_the_allowed_ones():
    with pytest.raises(C.ConfigError, match=r"train\.lr_cnn.*allowed keys.*cnn_lr"):
        C.load("ds_synthetic", ["train.lr_cnn=1e-4"])
    with pytest.raises(C.ConfigError, match=r"unknown section 'optim'"):
        C.from_dict({"optim": {}})


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("task.aggregation=avg", r"task\.aggregation must be one of lse, mean, max"),
        ("task.name=msrvtt", r"task\.name must be one of .*msrvtt_ret"),
        ("train.lr=-1", r"train\.lr must be >= 0"),
        ("train.batch_size=0", r"train\.batch_size must be >= 1"),
        ("train.batch_size=2.5", r"train\.batch_size must be an int"),
        ("train.betas=[0.9]", r"train\.betas must be two numbers"),
        # JSON reads NaN and Infinity, and every comparison with NaN is false
        ("train.lr=NaN", r"train\.lr must be a finite number, got nan"),
        ("train.warmup_ratio=NaN", r"train\.warmup_ratio must be a finite number"),
        ("train.eps=Infinity", r"train\.eps must be a finite number, got inf"),
        ("train.betas=[NaN,0.98]", r"train\.betas\[0\] must be a finite number"),
        ("train.betas=[0.9,1.0]", r"train\.betas\[1\] must be < 1"),
        ("eval.word_score_weight=NaN", r"eval\.word_score_weight must be a finite number"),
        ("model.layer_norm_eps=NaN", r"layer_norm_eps must be a finite number > 0"),
        # Python's spelling arrives as a string, which is truthy: the run did the opposite
        ("eval.only=False", r"eval\.only must be true or false \(JSON\), got 'False'"),
        ("train.plot=no", r"train\.plot must be true or false"),
        ("model.channels_last=False", r"channels_last must be true or false, got 'False'"),
        ("train.resume=1", r"train\.resume must be a string, got 1"),
        ("model.pixel_std=[NaN,1,1]", r"pixel_mean and pixel_std must be finite"),
        ("train.device=tpu", r"train\.device must be one of auto, cpu, cuda"),
        ("train.compile=all", r"train\.compile must be one of none, cnn, full"),
        ("eval.split=dev", r"eval\.split must be one of val, test"),
        ("eval.test_split=train", r"eval\.test_split must be one of val, test; got 'train'"),
        (
            "deepspeed.zero_optimization.stage=4",
            r"deepspeed\.zero_optimization\.stage must be one of 0, 1, 2, 3",
        ),
        ("deepspeed.fp16.enabled=true", r"bf16\.enabled and deepspeed\.fp16\.enabled are both true"),
        # a scalar where DeepSpeed wants an object: a ConfigError naming the key, not an AttributeError
        ("deepspeed.zero_optimization=2", r"deepspeed\.zero_optimization must be a JSON object, got 2"),
        ("deepspeed.bf16=true", r"deepspeed\.bf16 must be a JSON object.*deepspeed\.bf16\.enabled="),
        ("deepspeed.optimizer=AdamW", r"deepspeed\.optimizer must be a JSON object, got 'AdamW'"),
        ("deepspeed.optimizer.params=1", r"deepspeed\.optimizer\.params must be a JSON object, got 1"),
        (
            "deepspeed.train_micro_batch_size_per_gpu=4",
            r"deepspeed\.train_micro_batch_size_per_gpu is set from",
        ),
        ("deepspeed.train_batch_size=16", r"deepspeed\.train_batch_size is set from train\.\*"),
        # DeepSpeed's own parse, at load time: a misspelt top-level key used to be ignored (ZeRO-0 ran), a
        # misspelt inner one failed with a pydantic traceback after the model was built
        (
            "deepspeed.zero_optimisation.stage=3",
            r"deepspeed\.zero_optimisation: DeepSpeed does not.*did you mean deepspeed\.zero_optimization",
        ),
        ("deepspeed.bf16.enable=true", r"deepspeed: bf16\.enable: unknown key"),
        (
            "deepspeed.zero_optimization.overlap_comm=maybe",
            r"deepspeed: zero_optimization\.overlap_comm: Input should be a valid boolean.*\(got 'maybe'\)",
        ),
        ("deepspeed.bfloat16.enabled=true", r"deepspeed\.bfloat16 is DeepSpeed's old name"),
        ("data.backend=opencv", r"backend must be one of pyav, dali, frame_store"),
        ("data.num_frames=3", r"unknown data config key 'num_frames'"),
        # strings and true where numbers or paths belong: a bare TypeError naming no key before
        ('data.clip_seconds="2"', r"clip_seconds must be a number, got '2'"),
        ("data.mlm_prob=true", r"mlm_prob must be a number, got True"),
        ("data.video_dir=3", r"video_dir must be a string \(a path\), got 3"),
        ('data.max_text_len="40"', r"max_text_len must be an int or an object of task -> int, got '40'"),
        ("model.head=qa", r"model\.head='qa' disagrees"),
        ("model.hidden_size=100", r"model: hidden_size 100 must be divisible"),
        # Adam divides by sqrt(v) + eps: eps is open at 0, where lr may be 0 (a frozen group)
        ("train.eps=0", r"train\.eps must be > 0, got 0"),
        ("train.peak_tflops=0", r"train\.peak_tflops must be > 0, got 0"),
        # JSON true is a Python int subclass: it passed as grad_accum 1
        ("train.grad_accum=true", r"train\.grad_accum must be an int, got True"),
        ("train.lr=true", r"train\.lr must be a number, got True"),
    ],
)
def test_bad_values_fail_at_start_up(override, pattern):
    with pytest.raises(C.ConfigError, match=pattern):
        C.load("ds_msrvtt", [override, "deepspeed.bf16.enabled=true"] if "fp16" in override else [override])


def test_compile_needs_zero_stage_0_to_2():
    assert C.load("ds_msrvtt", ["train.compile=cnn"]).train.compile == "cnn"
    with pytest.raises(
        C.ConfigError, match=r"train\.compile='cnn' needs deepspeed\.zero_optimization\.stage 0-2"
    ):
        C.load("ds_msrvtt", ["train.compile=cnn", "deepspeed.zero_optimization.stage=3"])
    assert C.load("ds_msrvtt", ["train.compile=full"]).train.compile == "full"
    with pytest.raises(
        C.ConfigError, match=r"train\.compile='full' needs deepspeed\.zero_optimization\.stage"
    ):
        C.load("ds_msrvtt", ["train.compile=full", "deepspeed.zero_optimization.stage=3"])


def test_set_values_are_json_where_possible():
    cfg = C.load(
        "ds_synthetic",
        [
            "train.max_steps=7",
            "train.resume=auto",
            "train.plot=false",
            "train.betas=[0.8, 0.9]",
            "model.freeze_at=1",
        ],
    )
    assert cfg.train.max_steps == 7 and cfg.train.resume == "auto" and cfg.train.plot is False
    assert cfg.train.betas == [0.8, 0.9]
    assert cfg.model_config().freeze_at == 1
    assert C.parse_value("1e-4") == 1e-4 and C.parse_value("outputs/x") == "outputs/x"


def test_set_needs_a_section_and_a_value():
    with pytest.raises(C.ConfigError, match="must start with a section"):
        C.load("ds_synthetic", ["lr=1"])
    with pytest.raises(C.ConfigError, match="expects section.key=value"):
        C.load("ds_synthetic", ["train.lr"])


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="no_such_config"):
        C.load("no_such_config.json")


def test_train_py_help_shows_only_its_own_flags_and_refuses_a_second_engine_config(capsys):
    from clipbert.train.run import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    shown = capsys.readouterr().out
    assert "--config" in shown and "exit codes: 0 done" in shown
    assert "deepspeed_config" not in shown and "deepscale" not in shown  # DeepSpeed's, which it refuses
    assert parse_args(["--config", "x.json", "--deepspeed"]).config == "x.json"  # other launchers' habit
    for flag in ("--deepspeed_config", "--deepscale_config"):
        with pytest.raises(SystemExit):
            parse_args(["--config", "x.json", flag, "ds.json"])
        assert f"{flag} is not used: put the engine settings in the config's deepspeed section" in (
            capsys.readouterr().err
        )


def test_train_py_answers_help_and_flag_errors_before_loading_torch():
    # torch, DeepSpeed and transformers took about 9 s to import before --help or a typo's message
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['train.py'] + sys.argv[1:]\n"
        "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
        "except SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)\n"
    )
    root = C.CONFIG_DIR.parent
    for args, code in ((["--help"], 0), (["--config", "x.json", "--bogus"], 2)):
        proc = subprocess.run(
            [sys.executable, "-c", probe, *args], cwd=root, capture_output=True, text=True, timeout=60
        )
        assert proc.stdout.strip().splitlines()[-1] == f"exit {code} False", proc.stdout + proc.stderr


def test_train_py_reports_a_missing_path_in_one_line(tmp_path):
    # a bad path found after the config loads (annotations, videos, checkpoints) used to end in a traceback
    ann = tmp_path / "annotations"
    args = ["--set", f"data.ann_dir={ann}", "--set", f"train.output_dir={tmp_path / 'out'}"]
    # a world of one of its own: an earlier in-process test's RANK/MASTER_PORT would point it at that
    # test's process group (address in use)
    world = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    proc = subprocess.run(
        [sys.executable, "train.py", "--config", "ds_synthetic.json", *args],
        cwd=C.CONFIG_DIR.parent,
        env={k: v for k, v in os.environ.items() if k not in world},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"annotation file not found: {ann}/msrvtt_ret_train.jsonl" in proc.stderr


def test_video_dir_is_checked_when_the_dataset_is_built(tmp_path):
    from clipbert.data.config import DataConfig
    from clipbert.data.preprocess import Normalization
    from clipbert.data.video_source import VideoSource

    norm = Normalization(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channel_order="RGB")
    with pytest.raises(FileNotFoundError, match=r"data\.video_dir='.*/none' is not a directory"):
        VideoSource(DataConfig(video_dir=str(tmp_path / "none")), norm, train=True)


def test_eval_only_needs_a_checkpoint():
    with pytest.raises(C.ConfigError, match=r"eval\.only=true needs eval\.checkpoint"):
        C.load("ds_synthetic", ["eval.only=true"])


def test_the_model_head_follows_the_task():
    assert C.load("ds_msrvtt_mc").model_config().head == "itm"  # scored by the retrieval model
    assert C.load("ds_tgif_action").model_config().head == "mc"
    assert C.load("ds_msrvtt_qa").model_config(num_answers=11).num_classes == 11


def test_video_dir_defaults_to_the_benchmark_layout():
    cfg = C.load("ds_msrvtt", ["data.ann_dir=/x/msrvtt/annotations"])
    assert cfg.data.video_dir == "/x/msrvtt/videos"
    assert C.load("ds_msrvtt", ["data.video_dir=/v"]).data.video_dir == "/v"


def test_init_bert_from_takes_the_checkpoint_sizes(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMALL_HF_BERT))
    cfg = C.load("ds_synthetic", [f"model.init_bert_from={tmp_path}", "model.num_layers=1"])
    mc = cfg.model_config()
    assert (mc.hidden_size, mc.num_heads, mc.intermediate_size, mc.num_layers) == (96, 3, 192, 1)
    assert cfg.model.bert_dir() == str(tmp_path)
    assert cfg.to_dict()["model"]["init_bert_from"] == str(tmp_path)
    assert C.load("ds_synthetic", ["model.init_bert_from="]).model.init_bert_from == ""
    with pytest.raises(C.ConfigError, match="init_bert_from.*no config.json"):
        C.load("ds_synthetic", [f"model.init_bert_from={tmp_path / 'missing'}"])


def test_a_base_model_from_random_weights_is_warned_about(train_log):
    # the shipped video configs set no weights (each runs on its own); the paper's Table 5 shows that fail
    from clipbert.train.run import _warn_if_from_scratch

    _warn_if_from_scratch(C.load("ds_msrvtt.json"))
    assert "training the base model without model.init_cnn_from or model.init_bert_from" in train_log.text
    train_log.clear()
    _warn_if_from_scratch(C.load("ds_msrvtt.json", ["train.init_checkpoint=outputs/pretrain/model"]))
    _warn_if_from_scratch(C.load("ds_vqa.json"))  # fine-tunes from the pre-trained model
    _warn_if_from_scratch(C.load("ds_synthetic.json"))  # the tiny preset, from scratch on purpose
    assert "training the base model" not in train_log.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_config_error(capfd):
    from clipbert.train.run import main

    assert main(["--config", "ds_synthetic", "--set", "train.device=cuda"]) == 2  # not a traceback, rc 1
    assert "config error: train.device=cuda but no CUDA device is visible" in capfd.readouterr().err


def test_a_vocabulary_smaller_than_the_tokenizers_is_a_config_error(tmp_path, capfd):
    # on a GPU an id past the embedding table is a device-side assert that names nothing
    from clipbert.train.run import main

    out = f"train.output_dir={tmp_path}"
    assert main(["--config", "ds_synthetic", "--set", "model.vocab_size=1000", "--set", out]) == 2
    assert (
        "model.vocab_size=1000 is smaller than the tokenizer's vocabulary (30522 tokens"
        in capfd.readouterr().err
    )


def test_a_config_with_a_bom_loads_and_one_not_in_utf8_names_the_file(tmp_path):
    shipped = (C.CONFIG_DIR / "ds_synthetic.json").read_bytes()
    path = tmp_path / "windows.json"
    path.write_bytes(b"\xef\xbb\xbf" + shipped)  # a UTF-8 BOM, as Notepad saves it
    assert C.load(path).task.name == C.load(C.CONFIG_DIR / "ds_synthetic.json").task.name
    path.write_bytes(shipped.replace(b'"task"', b'"t\xe2sk"'))  # a latin-1 byte, not UTF-8
    with pytest.raises(C.ConfigError, match=r"windows\.json: not UTF-8 text"):
        C.load(path)


def test_unusable_data_exits_2_naming_the_file_without_a_traceback(tmp_path, capfd):
    from clipbert.train.run import main

    ann = tmp_path / "annotations"
    ann.mkdir()
    (tmp_path / "videos").mkdir()
    (ann / "msrvtt_ret_train.jsonl").write_text('{"caption": "a", "clip_name": "v0"}\n{"caption": 3}\n')
    argv = [
        "--config",
        "ds_synthetic",
        "--set",
        f"data.ann_dir={ann}",
        "--set",
        f"data.video_dir={tmp_path}/videos",
    ]
    argv += ["--set", f"train.output_dir={tmp_path}/out"]
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert f"{ann / 'msrvtt_ret_train.jsonl'}:2: missing key(s) clip_name" in err and "Traceback" not in err
    (ann / "msrvtt_ret_train.jsonl").write_text("\n")  # a split without examples
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert "msrvtt_ret_train.jsonl: no examples" in err and "Traceback" not in err
    (tmp_path / "frames.h5").write_bytes(b"not hdf5")  # a damaged frame store
    (ann / "msrvtt_ret_train.jsonl").write_text('{"caption": "a", "clip_name": "v0"}\n')
    store = ["--set", "data.backend=frame_store", "--set", f"data.frame_store={tmp_path}/frames.h5"]
    assert main([*argv, *store]) == 2
    err = capfd.readouterr().err
    assert "is not a readable HDF5 file" in err and "Traceback" not in err


def test_a_bert_dir_without_weights_is_a_config_error_naming_init_bert_from(tmp_path):
    from clipbert.train.run import build_model

    hf = {"vocab_size": 30522, "hidden_size": 96, "num_hidden_layers": 1, "num_attention_heads": 3}
    (tmp_path / "config.json").write_text(
        json.dumps({**hf, "intermediate_size": 192, "max_position_embeddings": 128})
    )
    cfg = C.load("ds_synthetic", [f"model.init_bert_from={tmp_path}"])
    # a ConfigError: train.py reports it as a message naming the key and exits 2, as for init_cnn_from
    with pytest.raises(C.ConfigError, match=rf"model\.init_bert_from='{tmp_path}': "):
        build_model(cfg, cfg.model_config())


@pytest.mark.parametrize(
    "override, ok",
    [
        ("model.num_heads=4", False),  # the same matrices split into other heads
        ('model.hidden_act="relu"', False),
        ("model.layer_norm_eps=1e-5", False),
        ("model.hidden_size=128", False),
        ("model.num_layers=8", False),  # more layers than the checkpoint's would stay random
        ("model.num_heads=3", True),  # the checkpoint's own value
        ("model.num_layers=2", True),  # the first 2 of 4 are kept
    ],
)
def test_overrides_of_the_bert_checkpoints_sizes_are_refused_by_name(tmp_path, override, ok):
    (tmp_path / "config.json").write_text(json.dumps(SMALL_HF_BERT))
    overrides = [f"model.init_bert_from={tmp_path}", override]
    if ok:
        C.load("ds_synthetic", overrides).model_config()
        return
    key = override.split("=")[0]
    with pytest.raises(C.ConfigError, match=rf"{key}=.*disagrees with the init_bert_from checkpoint"):
        C.load("ds_synthetic", overrides)  # load builds the model config to check it


def test_print_config_shows_the_resolved_config_as_json_alone(capsys):
    from clipbert.train.run import main

    argv = ["--config", "ds_synthetic.json", "--set", "data.num_clips=3", "--print-config"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout: it can be redirected
    assert printed["data"]["num_clips"] == 3 and printed["eval"]["best_metric"] == "auto"
    assert printed["model_config"]["image_size"] == printed["data"]["image_size"]
    assert main(["--config", "ds_synthetic.json", "--set", "data.num_clipz=3", "--print-config"]) == 2
