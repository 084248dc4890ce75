"""ClipBert with unusual-but-real inputs: odd frame sizes, T=1 and T=16, empty texts, dtypes and devices of
the inputs, masks, out-of-vocabulary ids, config values of the wrong type, overrides of a saved model.
Each bad input must raise a ValueError that names the input and what was expected. Tiny shapes (CPU)."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from clipbert.models import ClipBert, ClipBertConfig, forward_flops

L = 128  # 4 visual tokens
VOCAB = 97
SMALL = dict(image_size=L, vocab_size=VOCAB, max_position_embeddings=40, max_text_len=12)


def tiny(**overrides) -> ClipBertConfig:
    return ClipBertConfig.from_preset("tiny", **{**SMALL, **overrides})


def texts(b: int, m: int, lt: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, VOCAB, (b, m, lt))
    mask = torch.ones_like(ids)
    mask[..., lt - 2 :] = 0  # right padding
    return ids, mask


@pytest.fixture(scope="module")
def model() -> ClipBert:
    torch.manual_seed(0)
    return ClipBert(tiny(visual_words=True)).eval()


# ------------------------------------------------------------------------------------ shapes that work
@pytest.mark.parametrize("size, tokens", [(64, 1), (100, 4), (240, 16)])
def test_frame_sizes_not_divisible_by_32(model, size, tokens):
    ids, mask = texts(1, 2, 7)
    with torch.no_grad():
        visual = model.encode_visual(torch.randn(1, 1, 1, 3, size, size))
        assert visual.tokens.shape == (1, 1, tokens, 128)
        assert tiny(image_size=size).grid_size ** 2 == tokens
        assert model.score(visual, ids, mask).shape == (1, 2, 1, 2)


@pytest.mark.parametrize("size, fusion", [(100, "mean"), (96, "conv2plus1d")])
def test_flops_at_odd_frame_sizes_match_flop_counter(size, fusion):
    cfg = tiny(image_size=size, temporal_fusion=fusion)
    net = ClipBert(cfg).eval()
    net.encoder.config._attn_implementation = "eager"  # CPU SDPA is invisible to FlopCounterMode
    ids, mask = texts(1, 2, 7)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.randn(1, 1, 2, 3, size, size), ids, mask)
    analytic = forward_flops(cfg, num_clips=1, frames_per_clip=2, text_len=7, num_texts=2)
    assert abs(analytic - counter.get_total_flops()) <= 0.02 * counter.get_total_flops()


@pytest.mark.parametrize("fusion", ["conv3d", "conv2plus1d"])
def test_conv_fusions_at_one_frame_equal_mean(fusion):
    # T=1: the temporal kernels see zero padding on both sides, so the Dirac start is still the identity
    torch.manual_seed(0)
    conv = ClipBert(tiny(temporal_fusion=fusion)).eval()
    mean = ClipBert(tiny()).eval()
    mean.load_state_dict(conv.state_dict(), strict=False)
    frames = torch.randn(1, 2, 1, 3, L, L)
    with torch.no_grad():
        torch.testing.assert_close(conv.encode_visual(frames).tokens, mean.encode_visual(frames).tokens)


def test_sixteen_frames_and_single_everything(model):
    ids, mask = texts(1, 1, 3)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 16, 3, L, L), ids, mask).shape == (1, 1, 1, 2)
        assert model(torch.randn(1, 1, 1, 3, L, L), ids[..., :1], None).shape == (1, 1, 1, 2)


def test_text_at_the_position_table_limit_plus_visual_tokens():
    # the visual tokens take no text positions: Lt = max_position_embeddings, then 16 visual tokens
    net = ClipBert(tiny(max_position_embeddings=10, max_text_len=10)).eval()
    ids, mask = texts(1, 2, 10)
    with torch.no_grad():
        assert net(torch.randn(1, 1, 1, 3, 240, 240), ids, mask).shape == (1, 2, 1, 2)
    with pytest.raises(ValueError, match=r"Lt <= 10, got \(1, 2, 11\)"):
        net(torch.randn(1, 1, 1, 3, L, L), *texts(1, 2, 11))


def test_grid_larger_than_the_position_tables_names_the_keys():
    net = ClipBert(tiny(max_grid_row=2, max_grid_col=3)).eval()
    assert net.encode_visual(torch.randn(1, 1, 1, 3, L, L)).tokens.shape == (1, 1, 4, 128)
    with pytest.raises(ValueError, match=r"grid 3x3 exceeds .*max_grid_row x max_grid_col = 2x3"):
        net.encode_visual(torch.randn(1, 1, 1, 3, 192, 192))


def test_pixel_sampling_larger_than_the_grid_keeps_every_token():
    net = ClipBert(tiny(pixel_random_sampling_size=50, hidden_dropout=0.0)).train()
    assert net.encode_visual(torch.randn(2, 1, 1, 3, L, L)).tokens.shape == (2, 1, 4, 128)


def test_eval_is_deterministic_and_train_varies_only_through_dropout():
    torch.manual_seed(0)
    frames = torch.randn(2, 2, 1, 3, L, L)
    ids, mask = texts(2, 2, 6)
    no_dropout = ClipBert(tiny(hidden_dropout=0.0, attention_dropout=0.0, frozen_bn=True)).train()
    assert torch.equal(no_dropout(frames, ids, mask), no_dropout(frames, ids, mask))
    net = ClipBert(tiny(frozen_bn=True)).train()
    assert not torch.equal(net(frames, ids, mask), net(frames, ids, mask))
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(frames, ids, mask), net(frames, ids, mask))


def test_mask_dtypes_agree(model):
    frames = torch.randn(1, 2, 1, 3, L, L)
    ids, mask = texts(1, 3, 6)
    with torch.no_grad():
        visual = model.encode_visual(frames)
        want = model.score(visual, ids, mask)
        for other in (mask.bool(), mask.float(), mask.int()):
            torch.testing.assert_close(model.score(visual, ids, other), want, rtol=0, atol=0)


# ------------------------------------------------------------------------------------ bad text inputs
def test_empty_texts_are_refused(model):
    visual = model.encode_visual(torch.randn(1, 2, 1, 3, L, L))
    ids, mask = texts(1, 2, 6)
    # Lt=0 used to return scores pooled from the first visual token; M=0 failed in a reshape
    for bad in (ids[..., :0], ids[:, :0]):
        with pytest.raises(ValueError, match=r"M >= 1 texts and Lt >= 1 tokens.*got \(1, [02], [06]\)"):
            model.score(visual, bad, None)
    with pytest.raises(ValueError, match=r"Lt >= 1"):
        model.pretrain_scores(visual, ids[..., :0], mask[..., :0])


def test_token_ids_outside_the_vocabulary_are_named(model):
    visual = model.encode_visual(torch.randn(1, 1, 1, 3, L, L))
    ids, mask = texts(1, 2, 6)
    ids[0, 1, 2] = 30521  # a bert-base-uncased id into a smaller vocabulary
    with pytest.raises(ValueError, match=r"input_ids .*vocab_size=97\), got values from \d+ to 30521"):
        model.score(visual, ids, mask)
    negative = ids.clamp(max=5)
    negative[0, 0, 0] = -1
    with pytest.raises(ValueError, match=r"input_ids .*got values from -1 to 5"):
        model.score(visual, negative, mask)
    for dtype in (torch.float32, torch.uint8):
        with pytest.raises(ValueError, match=rf"input_ids must be int64 \(or int32\) token ids.*{dtype}"):
            model.score(visual, ids.clamp(max=90).to(dtype), mask)


def test_left_padded_or_empty_mask_rows_are_refused(model):
    visual = model.encode_visual(torch.randn(1, 1, 1, 3, L, L))
    ids, mask = texts(1, 3, 6)
    left = mask.flip(-1)  # [0, 0, 1, 1, 1, 1]: the pooler would read a [PAD]
    with pytest.raises(
        ValueError, match=r"masks the first token.*\[0, 0\], \[0, 1\], \[0, 2\].*right-padded"
    ):
        model.score(visual, ids, left)
    empty = mask.clone()
    empty[0, 1] = 0
    with pytest.raises(ValueError, match=r"masks the first token of some texts \(\[b, m\] = \[0, 1\]\)"):
        model.score(visual, ids, empty)
    additive = (1.0 - mask.float()) * -10000.0  # an HF "extended" mask: 0 = attend, reads as all padding
    with pytest.raises(ValueError, match=r"1 \(or True\) where a token is attended"):
        model.score(visual, ids, additive)


def test_inputs_on_another_device_are_named(model):
    visual = model.encode_visual(torch.randn(1, 1, 1, 3, L, L))
    ids, mask = texts(1, 1, 6)
    # the meta device stands in for a GPU: before, meta ids gave meta scores without a word
    with pytest.raises(ValueError, match=r"input_ids is on meta but the visual tokens \(frames\) are on cpu"):
        model.score(visual, ids.to("meta"), mask)
    with pytest.raises(ValueError, match=r"attention_mask is on meta but .* on cpu"):
        model.score(visual, ids, mask.to("meta"))
    with pytest.raises(ValueError, match=r"frames are on meta but the model is on cpu"):
        model.encode_visual(torch.randn(1, 1, 1, 3, L, L, device="meta"))


# ------------------------------------------------------------------------------------ frames dtypes
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_frames_dtype_other_than_the_weights_is_named(model, dtype):
    frames = torch.randn(1, 1, 1, 3, L, L, dtype=dtype)
    with pytest.raises(
        ValueError, match=rf"frames have dtype {dtype} but the model's weights are torch.float32"
    ):
        model.encode_visual(frames)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        if dtype == torch.float64:  # autocast leaves float64 alone: the convolution would fail
            with pytest.raises(ValueError, match=r"frames have dtype torch.float64"):
                model.encode_visual(frames)
        else:  # autocast casts the frames: allowed
            assert model.encode_visual(frames).tokens.shape == (1, 1, 4, 128)


def test_float64_model_takes_float64_frames():
    net = ClipBert(tiny()).double().eval()
    ids, mask = texts(1, 1, 5)
    with torch.no_grad():
        assert net(torch.randn(1, 1, 1, 3, L, L, dtype=torch.float64), ids, mask).dtype == torch.float64


def test_channels_last_and_strided_frames(model):
    frames = torch.randn(2, 3, L, L)
    wide = torch.randn(1, 2, 1, 3, L, 2 * L)[..., ::2]  # non-contiguous
    nhwc = frames.contiguous(memory_format=torch.channels_last).view(1, 2, 1, 3, L, L)
    with torch.no_grad():
        want = model.encode_visual(frames.view(1, 2, 1, 3, L, L)).tokens
        torch.testing.assert_close(model.encode_visual(nhwc).tokens, want)
        strided = model.encode_visual(wide).tokens
        torch.testing.assert_close(strided, model.encode_visual(wide.contiguous()).tokens)


# ------------------------------------------------------------------------------------ heads' labels
def test_pretraining_labels_out_of_range_are_named():
    net = ClipBert(tiny()).eval()
    frames = torch.randn(2, 1, 1, 3, L, L)
    ids, mask = texts(2, 1, 6)
    labels = torch.full_like(ids, -100)
    labels[..., 1] = 5
    itm = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"itm_labels must be in \[0, 2\), got values from 0 to 2"):
        net.pretrain_forward(frames, ids, mask, labels, torch.tensor([0, 2]))
    for dtype in (torch.float32, torch.int32):
        with pytest.raises(ValueError, match=rf"itm_labels must be int64.*{dtype}"):
            net.pretrain_forward(frames, ids, mask, labels, itm.to(dtype))
    labels[0, 0, 2] = VOCAB
    with pytest.raises(ValueError, match=r"mlm_labels must be in \[0, 97\) or -100 .*from 5 to 97"):
        net.pretrain_forward(frames, ids, mask, labels, itm)


def test_visual_word_ids_are_checked(model):
    frames = torch.randn(1, 1, 1, 3, L, L)
    ids, mask = texts(1, 1, 5)
    with pytest.raises(
        ValueError, match=r"word_ids must be in \[0, vocab_size=97\), got values from 3 to 500"
    ):
        model(frames, ids, mask, torch.tensor([3, 500]))
    with pytest.raises(ValueError, match=r"word_ids must be int64 vocabulary ids \[W\], got shape \(1, 2\)"):
        model(frames, ids, mask, torch.tensor([[3, 5]]))


# ------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_size="256"), "hidden_size must be an integer, got '256'"),
        (dict(pixel_random_sampling_size=100.0), "pixel_random_sampling_size must be an integer, got 100.0"),
        (dict(freeze_at=2.5), "freeze_at must be an integer, got 2.5"),
        (dict(freeze_at=True), "freeze_at must be an integer, got True"),
        (dict(hidden_dropout="0.1"), "hidden_dropout must be a number, got '0.1'"),
        (dict(backbone_layers="3463"), "backbone_layers must be a list of integers, got '3463'"),
        (dict(pixel_mean=("a", 1, 2)), "pixel_mean must be a list of 3 numbers"),
    ],
)
def test_config_values_of_the_wrong_type_name_the_key(overrides, message):
    with pytest.raises(ValueError) as err:
        tiny(**overrides)
    assert message in str(err.value)


def test_config_accepts_numpy_and_integral_numbers():
    cfg = tiny(hidden_size=np.int64(64), num_heads=2, hidden_dropout=0, layer_norm_eps=np.float32(1e-6))
    assert (type(cfg.hidden_size), type(cfg.hidden_dropout), type(cfg.layer_norm_eps)) == (int, float, float)
    assert ClipBertConfig.from_dict(cfg.to_dict()) == cfg


def test_from_pretrained_refuses_overrides_the_weights_are_tied_to(tmp_path, model):
    model.save_pretrained(tmp_path)
    # num_heads loads without a shape error and splits the attention another way: silently other scores
    with pytest.raises(ValueError, match=r"num_heads: saved 2, override 4.*drop those overrides"):
        ClipBert.from_pretrained(tmp_path, num_heads=4)
    with pytest.raises(ValueError, match=r"backbone_style: saved 'torchvision', override 'msra'"):
        ClipBert.from_pretrained(tmp_path, backbone_style="msra")
    loaded = ClipBert.from_pretrained(tmp_path, channels_last=True, freeze_at=2, num_heads=2).eval()
    frames = torch.randn(1, 1, 1, 3, L, L)
    with torch.no_grad():
        want = model.encode_visual(frames).tokens
        torch.testing.assert_close(loaded.encode_visual(frames).tokens, want)


def test_from_pretrained_names_a_cut_or_foreign_file(tmp_path, model):
    model.save_pretrained(tmp_path)
    weights, config = tmp_path / "model.safetensors", tmp_path / "clipbert_config.json"
    content = weights.read_bytes()
    weights.write_bytes(content[: len(content) // 2])  # was a SafetensorError naming no file
    with pytest.raises(ValueError, match=r"model.safetensors: unreadable .*cut short"):
        ClipBert.from_pretrained(tmp_path)
    weights.write_bytes(content)
    text = config.read_text()
    config.write_text(text[: len(text) // 2])  # was a bare JSONDecodeError
    with pytest.raises(ValueError, match=r"clipbert_config.json: not valid JSON"):
        ClipBert.from_pretrained(tmp_path)
    config.write_text("[1, 2]")  # was TypeError("'list' object is not a mapping")
    with pytest.raises(ValueError, match=r"clipbert_config.json: expected a JSON object .*got list"):
        ClipBert.from_pretrained(tmp_path)
