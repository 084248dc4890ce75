"""Original ClipBERT checkpoints (jayleicn/ClipBERT): every key of the e2e model's state dict lands, and the
converted model computes what the original's modules compute (re-implemented here from src/modeling/
{modeling,transformers,grid_feat}.py on tiny random inputs).

The original state dict is ClipBert(nn.Module) with `cnn` (GridFeatBackbone: `feature` = detectron2
GeneralizedRCNN, `grid_encoder`) and `transformer` (ClipBertForPreTraining: bert + cls; or
ClipBertForSequenceClassification / ClipBertForVideoTextRetrieval / ClipBertForMultipleChoice: bert +
classifier, the MLP of cls_hidden_scale 2). The original trains with apex O2, so its tensors are float16.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from test_weights import detectron2_names

from clipbert.models import ClipBert, ClipBertConfig
from clipbert.models.weights import convert_original_state_dict, load_original_clipbert, main

SMALL = dict(image_size=128, vocab_size=97, max_position_embeddings=40, max_text_len=12)
SMALL.update(backbone_style="msra", frozen_bn=True, freeze_at=2, hidden_dropout=0.0, attention_dropout=0.0)
SMALL.update(max_grid_row=6, max_grid_col=5)


def tiny(**overrides) -> ClipBertConfig:
    return ClipBertConfig.from_preset("tiny", **{**SMALL, **overrides})


# ------------------------------------------------------------------------------------ original names
_detectron2_resnet = detectron2_names  # the original's backbone is detectron2's R-50 (FrozenBN)


def _detector_heads(c5: int) -> dict[str, tuple[int, ...]]:
    """Parts of the grid-feat GeneralizedRCNN that ClipBERT never runs (RPN, AttributeStandardROIHeads)."""
    return {
        "pixel_mean": (3, 1, 1),
        "pixel_std": (3, 1, 1),
        "proposal_generator.rpn_head.conv.weight": (c5, c5, 3, 3),
        "proposal_generator.rpn_head.conv.bias": (c5,),
        "proposal_generator.rpn_head.objectness_logits.weight": (15, c5, 1, 1),
        "proposal_generator.anchor_generator.cell_anchors.0": (15, 4),
        "roi_heads.box_head.fc1.weight": (16, c5),
        "roi_heads.box_predictor.cls_score.weight": (1601, 16),
        "roi_heads.attribute_predictor.obj_embed.weight": (1601, 8),
    }


def original_state_dict(cfg: ClipBertConfig, kind: str, num_labels: int = 0) -> dict[str, torch.Tensor]:
    """e2e ClipBert.state_dict() of the original for `kind` pretrain (MLM + ITM heads) or a fine-tuned
    classifier of `num_labels` outputs (retrieval ce: 2, QA: answers, TGIF action/transition: 1)."""
    h, inter = cfg.hidden_size, cfg.intermediate_size
    shapes = {
        "cnn.feature.backbone." + k: s
        for k, s in _detectron2_resnet(cfg.backbone_layers, cfg.backbone_width).items()
    }
    shapes.update({"cnn.feature." + k: s for k, s in _detector_heads(cfg.backbone_out_channels).items()})
    shapes["cnn.grid_encoder.0.weight"] = (h, cfg.backbone_out_channels, 3, 3)
    bert = "transformer.bert."
    shapes[bert + "embeddings.word_embeddings.weight"] = (cfg.vocab_size, h)
    shapes[bert + "embeddings.position_embeddings.weight"] = (cfg.max_position_embeddings, h)
    shapes[bert + "embeddings.token_type_embeddings.weight"] = (cfg.type_vocab_size, h)
    visual = bert + "visual_embeddings."
    shapes[visual + "position_embeddings.weight"] = (cfg.max_position_embeddings, h)  # never used
    shapes[visual + "row_position_embeddings.weight"] = (cfg.max_grid_row, h)
    shapes[visual + "col_position_embeddings.weight"] = (cfg.max_grid_col, h)
    shapes[visual + "token_type_embeddings.weight"] = (1, h)
    norms = [bert + "embeddings.LayerNorm", visual + "LayerNorm"]
    linears = {bert + "pooler.dense": (h, h)}
    for i in range(cfg.num_layers):
        layer = f"{bert}encoder.layer.{i}."
        for proj in ("query", "key", "value"):
            linears[layer + "attention.self." + proj] = (h, h)
        linears[layer + "attention.output.dense"] = (h, h)
        linears[layer + "intermediate.dense"] = (inter, h)
        linears[layer + "output.dense"] = (h, inter)
        norms += [layer + "attention.output.LayerNorm", layer + "output.LayerNorm"]
    if kind == "pretrain":
        linears["transformer.cls.predictions.transform.dense"] = (h, h)
        linears["transformer.cls.seq_relationship"] = (2, h)
        norms.append("transformer.cls.predictions.transform.LayerNorm")
    else:
        linears["transformer.classifier.0"] = (2 * h, h)
        linears["transformer.classifier.2"] = (num_labels, 2 * h)
    for name, (out, inp) in linears.items():
        shapes[name + ".weight"], shapes[name + ".bias"] = (out, inp), (out,)
    for name in norms:
        shapes[name + ".weight"], shapes[name + ".bias"] = (h,), (h,)
    state = {k: torch.randn(s) * 0.5 for k, s in shapes.items()}
    for key in [k for k in state if k.endswith("running_var")]:
        state[key] = state[key].abs() + 0.5
    if kind == "pretrain":
        # BertLMPredictionHead: decoder.weight tied to the word embeddings, decoder.bias aliases cls bias
        bias = torch.randn(cfg.vocab_size)
        state["transformer.cls.predictions.bias"] = bias
        state["transformer.cls.predictions.decoder.bias"] = bias
        state["transformer.cls.predictions.decoder.weight"] = state[
            bert + "embeddings.word_embeddings.weight"
        ]
    return state


KINDS = {  # kind -> (our head, original classifier outputs)
    "pretrain": ("itm", 0),
    "retrieval": ("itm", 2),
    "qa": ("qa", 7),
    "tgif_action": ("mc", 1),
}


def _model_for(kind: str) -> tuple[ClipBertConfig, ClipBert]:
    head, labels = KINDS[kind]
    cfg = tiny(head=head, num_answers=labels if head == "qa" else 0, pretrain_heads=kind == "pretrain")
    torch.manual_seed(1)
    return cfg, ClipBert(cfg).eval()


# ------------------------------------------------------------------------------------ key coverage
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_original_key_lands_or_is_ignored_with_a_reason(kind):
    cfg, model = _model_for(kind)
    source = original_state_dict(cfg, kind, KINDS[kind][1])
    report = load_original_clipbert(model, source)
    assert report.missing == [] and report.unexpected == []
    ignored = {
        k
        for k in source
        if k.startswith(("cnn.feature.proposal_generator.", "cnn.feature.roi_heads.", "cnn.feature.pixel_"))
        or k.startswith("transformer.cls.predictions.decoder.")
        or k == "transformer.bert.visual_embeddings.position_embeddings.weight"
    }
    assert set(report.ignored) == ignored
    assert len(report.loaded) + len(report.ignored) == len(source)
    state = model.state_dict()
    # every tensor of ours but the head the checkpoint does not have (pre-training: the new classifier)
    expected = {k for k in state if not (kind == "pretrain" and k.startswith("classifier."))}
    assert set(report.loaded) == expected
    mapped, _ = convert_original_state_dict(source)
    for ours, value in mapped.items():
        torch.testing.assert_close(state[ours], value, rtol=0, atol=0, msg=ours)


# ------------------------------------------------------------------------------------ original forward
def _ln(x, sd, name, eps=1e-12):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def _lin(x, sd, name):
    return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])


def original_visual_embedding(res5: torch.Tensor, sd: dict, n_frames: int) -> torch.Tensor:
    """GridFeatBackbone.grid_encoder + VisualInputEmbedding.forward (eval): res5 [B*T, C5, h, w] ->
    [B, h'*w', H]."""
    grid = F.relu(F.max_pool2d(F.conv2d(res5, sd["cnn.grid_encoder.0.weight"], padding=1), 2, 2))
    grid = grid.view(-1, n_frames, *grid.shape[1:]).permute(0, 1, 3, 4, 2)  # (B, T, h, w, d)
    grid = grid.mean(1)  # temporal mean pooling
    height, width, hsz = grid.shape[-3:]
    v = "transformer.bert.visual_embeddings."
    grid = grid + sd[v + "row_position_embeddings.weight"][:height].view(height, 1, hsz)
    grid = grid + sd[v + "col_position_embeddings.weight"][:width].view(1, width, hsz)
    tokens = grid.reshape(grid.shape[0], -1, hsz) + sd[v + "token_type_embeddings.weight"][0]
    return _ln(tokens, sd, v + "LayerNorm")


def original_transformer(ids, mask, visual, sd, cfg):
    """ClipBertBaseModel.forward (eval): ids/mask [S, Lt], visual [S, Lv, H] -> sequence, pooled."""
    b = "transformer.bert."
    lt = ids.shape[1]
    text = sd[b + "embeddings.word_embeddings.weight"][ids]
    text = text + sd[b + "embeddings.position_embeddings.weight"][:lt]
    text = _ln(text + sd[b + "embeddings.token_type_embeddings.weight"][0], sd, b + "embeddings.LayerNorm")
    x = torch.cat([text, visual], 1)
    full = torch.cat([mask, mask.new_ones(visual.shape[:2])], -1).float()
    additive = (1.0 - full)[:, None, None, :] * -10000.0  # get_extended_attention_mask
    heads, hd = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    for i in range(cfg.num_layers):
        p = f"{b}encoder.layer.{i}."

        def split(t):
            return t.view(t.shape[0], -1, heads, hd).permute(0, 2, 1, 3)

        q, k, v = (split(_lin(x, sd, p + "attention.self." + n)) for n in ("query", "key", "value"))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + additive, -1)
        ctx = (probs @ v).permute(0, 2, 1, 3).reshape(x.shape)
        att = _ln(_lin(ctx, sd, p + "attention.output.dense") + x, sd, p + "attention.output.LayerNorm")
        inter = F.gelu(_lin(att, sd, p + "intermediate.dense"))  # transformers.activations.gelu: erf
        x = _ln(_lin(inter, sd, p + "output.dense") + att, sd, p + "output.LayerNorm")
    pooled = torch.tanh(_lin(x[:, 0], sd, b + "pooler.dense"))
    return x, pooled


def _inputs(cfg, batch=2, lt=6):
    ids = torch.randint(1, cfg.vocab_size, (batch, lt))
    mask = torch.ones(batch, lt, dtype=torch.long)
    mask[0, 4:] = 0  # a right-padded text
    return ids, mask


def _converted_float64(kind: str, prepare=None) -> tuple[ClipBertConfig, ClipBert, dict]:
    """A model loaded from an original state dict, both in float64 (the re-implementation is the
    reference; float64 keeps the comparison about semantics, not rounding)."""
    cfg, model = _model_for(kind)
    sd = original_state_dict(cfg, kind, KINDS[kind][1])
    if prepare is not None:
        sd = prepare(sd)
    load_original_clipbert(model, sd)
    return cfg, model.double(), {k: v.double() for k, v in sd.items()}


@pytest.mark.parametrize("frames", [1, 3])
def test_visual_side_matches_the_original(frames):
    cfg, model, sd = _converted_float64("qa")
    res5 = torch.randn(
        2 * frames, cfg.backbone_out_channels, 8, 6, dtype=torch.float64
    )  # a non-square grid: rows vs columns
    expected = original_visual_embedding(res5, sd, frames)  # [2, 4*3, H]
    with torch.no_grad():
        grid = model.cnn.grid_encoder(res5)
        grid = model.cnn.temporal(grid.view(2, frames, *grid.shape[1:]))
        tokens = model.visual_embeddings(grid)
    torch.testing.assert_close(tokens, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["qa", "retrieval", "tgif_action"])
def test_classifier_logits_match_the_original(kind):
    cfg, model, sd = _converted_float64(kind)
    visual = torch.randn(2, 1, 5, cfg.hidden_size, dtype=torch.float64)
    ids, mask = _inputs(cfg)
    _, pooled = original_transformer(ids, mask, visual[:, 0], sd, cfg)
    hidden = F.relu(_lin(pooled, sd, "transformer.classifier.0"))
    expected = _lin(hidden, sd, "transformer.classifier.2")  # [2, K]
    from clipbert.models.clipbert import VisualTokens

    with torch.no_grad():
        logits = model.score(VisualTokens(visual), ids[:, None], mask[:, None])  # [2, 1, 1, K]
    torch.testing.assert_close(logits[:, 0, 0], expected, rtol=1e-6, atol=1e-6)


def test_pretraining_heads_match_the_original():
    """cls.predictions (transform, tied decoder, bias) on the text part; cls.seq_relationship on pooled."""
    cfg, model, sd = _converted_float64("pretrain")
    visual = torch.randn(2, 1, 5, cfg.hidden_size, dtype=torch.float64)
    ids, mask = _inputs(cfg)
    seq, pooled = original_transformer(ids, mask, visual[:, 0], sd, cfg)
    c = "transformer.cls."
    transformed = _ln(
        F.gelu(_lin(seq[:, : ids.shape[1]], sd, c + "predictions.transform.dense")),
        sd,
        c + "predictions.transform.LayerNorm",
    )
    mlm = F.linear(transformed, sd[c + "predictions.decoder.weight"], sd[c + "predictions.decoder.bias"])
    itm = _lin(pooled, sd, c + "seq_relationship")
    from clipbert.models.clipbert import VisualTokens

    with torch.no_grad():
        out = model.pretrain_scores(VisualTokens(visual), ids[:, None], mask[:, None], mlm=True)
    torch.testing.assert_close(out["itm_logits"][:, 0, 0], itm, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["mlm_logits"][:, 0, 0], mlm, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------ the converter CLI
def cli_config() -> ClipBertConfig:
    """The CLI's `--preset tiny` model (original backbone settings, the full vocabulary)."""
    return ClipBertConfig.from_preset("tiny", backbone_style="msra", frozen_bn=True, freeze_at=2)


def _cli(tmp_path, source, *args):
    return main([str(source), str(tmp_path / "out"), "--preset", "tiny", *args])


def test_cli_converts_an_apex_o2_float16_pretrained_file(tmp_path, capsys):
    cfg = cli_config()
    source = original_state_dict(cfg, "pretrain")
    torch.save({k: v.half() for k, v in source.items()}, tmp_path / "clipbert_image_text_pretrained.pt")
    assert _cli(tmp_path, tmp_path / "clipbert_image_text_pretrained.pt") == 0
    assert "missing 0, unexpected 0" in capsys.readouterr().out
    state = ClipBert.from_pretrained(tmp_path / "out").state_dict()
    key = "transformer.bert.visual_embeddings.row_position_embeddings.weight"
    torch.testing.assert_close(
        state["visual_embeddings.row_position_embeddings.weight"], source[key].half().float()
    )


def test_cli_converts_the_originals_restore_file(tmp_path):
    """The original trainer's E2E_TrainingRestorer writes restore.pt: {"global_step", "model_state_dict"
    (float16), "optim_state_dict", "amp_state_dict"}. It was refused: "holds no tensors"."""
    cfg = cli_config()
    source = original_state_dict(cfg, "qa", 7)
    restore = {"global_step": 10, "model_state_dict": {k: v.half() for k, v in source.items()}}
    restore["optim_state_dict"] = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": []}
    torch.save(restore, tmp_path / "restore.pt")
    assert (
        _cli(tmp_path, tmp_path / "restore.pt", "--head", "qa", "--num-answers", "7", "--no-pretrain-heads")
        == 0
    )
    state = ClipBert.from_pretrained(tmp_path / "out").state_dict()
    torch.testing.assert_close(
        state["classifier.2.bias"], source["transformer.classifier.2.bias"].half().float()
    )


def test_cli_refuses_an_already_converted_directory(tmp_path, caplog):
    """Our own save_pretrained directory shares one name with the original (cnn.grid_encoder.0.weight): it
    was "converted" into a randomly initialized model (loaded 1, missing 129) written to out_dir."""
    ClipBert(cli_config()).save_pretrained(tmp_path / "converted")
    assert _cli(tmp_path, tmp_path / "converted") == 2
    assert not (tmp_path / "out").exists()
    assert "from_pretrained" in caplog.text and "not an original ClipBERT checkpoint" in caplog.text


def test_cli_says_which_heads_the_checkpoint_lacks(tmp_path, caplog):
    """A fine-tuned checkpoint converted with the default pre-training heads: cls.* stayed random in the
    written model while the CLI reported "missing 0" and nothing else."""
    cfg = cli_config()
    torch.save(original_state_dict(cfg, "qa", 7), tmp_path / "qa.pt")
    caplog.set_level("INFO")
    assert _cli(tmp_path, tmp_path / "qa.pt", "--head", "qa", "--num-answers", "7") == 0
    assert "cls.* (pre-training heads) not in the checkpoint" in caplog.text
    assert "--no-pretrain-heads" in caplog.text


def test_loader_refuses_a_state_dict_without_original_names():
    cfg, model = _model_for("qa")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="not an original ClipBERT checkpoint"):
        load_original_clipbert(model, {"cnn.grid_encoder.0.weight": torch.zeros(128, 512, 3, 3)})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded


# ------------------------------------------------------------------------------------ whole model
def _d2_conv_norm(x, sd, name, stride=1, padding=0):
    """detectron2 Conv2d with a FrozenBatchNorm2d norm (eps 1e-5), no bias."""
    x = F.conv2d(x, sd[name + ".weight"], stride=stride, padding=padding)
    scale = sd[name + ".norm.weight"] * (sd[name + ".norm.running_var"] + 1e-5).rsqrt()
    shift = sd[name + ".norm.bias"] - sd[name + ".norm.running_mean"] * scale
    return x * scale[:, None, None] + shift[:, None, None]


def original_resnet(x, sd, layers):
    """detectron2 ResNet (BasicStem, BottleneckBlock with STRIDE_IN_1X1, RES5_DILATION 1) -> res5."""
    p = "cnn.feature.backbone."
    x = F.max_pool2d(F.relu(_d2_conv_norm(x, sd, p + "stem.conv1", 2, 3)), 3, 2, 1)
    for stage, blocks in enumerate(layers, start=2):
        for b in range(blocks):
            block = f"{p}res{stage}.{b}"
            stride = 2 if (b == 0 and stage > 2) else 1
            shortcut = _d2_conv_norm(x, sd, block + ".shortcut", stride) if b == 0 else x
            out = F.relu(_d2_conv_norm(x, sd, block + ".conv1", stride))  # stride in the 1x1 conv
            out = F.relu(_d2_conv_norm(out, sd, block + ".conv2", 1, 1))
            x = F.relu(_d2_conv_norm(out, sd, block + ".conv3") + shortcut)
    return x


def test_whole_model_matches_the_original_from_bgr_frames():
    """frames -> ResNet -> grid encoder -> temporal mean -> visual embedding -> BERT -> classifier, with the
    backbone names mapped (a swapped conv1/conv2 norm, both [mid], would load without a shape error)."""

    def damp_convs(sd):  # smaller conv weights: activations stay O(1) through the ResNet
        return {
            k: v * 0.2 if k.startswith("cnn.feature.backbone.") and v.dim() == 4 else v for k, v in sd.items()
        }

    cfg, model, sd = _converted_float64("qa", damp_convs)
    frames = torch.randn(2, 1, 2, 3, 128, 128, dtype=torch.float64)  # [B, N=1, T=2, 3, L, L], normalized, BGR
    ids, mask = _inputs(cfg)
    res5 = original_resnet(frames.flatten(0, 2), sd, cfg.backbone_layers)  # [B*T, C5, 4, 4]
    visual = original_visual_embedding(res5, sd, 2)
    _, pooled = original_transformer(ids, mask, visual, sd, cfg)
    expected = _lin(F.relu(_lin(pooled, sd, "transformer.classifier.0")), sd, "transformer.classifier.2")
    with torch.no_grad():
        logits = model(frames, ids[:, None], mask[:, None])  # [B, M=1, N=1, K]
    torch.testing.assert_close(logits[:, 0, 0], expected, rtol=1e-6, atol=1e-6)
