"""The stem rewrites of the Figure-5 optimized path compute the stem convolution exactly (float64)."""

import pytest
import torch

from clipbert.perf.stem import PaddedStemConv, SpaceToDepthStemConv


def _frozen_conv(kernel: int, padding: int, stride: int = 2, out: int = 5, bias: bool = False):
    torch.manual_seed(kernel * 10 + padding)
    conv = torch.nn.Conv2d(3, out, kernel, stride=stride, padding=padding, bias=bias).double()
    conv.requires_grad_(False)
    return conv


@pytest.mark.parametrize("kernel,padding", [(7, 3), (3, 1), (5, 0), (4, 1), (1, 0)])
@pytest.mark.parametrize("size", [(16, 16), (17, 12), (9, 10)])
@pytest.mark.parametrize("channels", [3, 4])
def test_space_to_depth_stem_is_the_stride_2_convolution(kernel, padding, size, channels):
    conv = _frozen_conv(kernel, padding, bias=kernel == 3)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    want = conv(x)
    stem = SpaceToDepthStemConv(conv, channels)
    k2 = (kernel + 1) // 2
    assert tuple(stem.weight.shape) == (5, 4 * channels, k2, k2)
    got = stem(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_space_to_depth_stem_keeps_channels_last_and_passes_gradients_to_its_input():
    conv = _frozen_conv(7, 3).to(memory_format=torch.channels_last)
    stem = SpaceToDepthStemConv(conv, 4)
    assert stem.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 12, 14, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    ref_x = x.detach().clone().requires_grad_()
    g = torch.randn_like(conv(ref_x))
    (stem(x) * g).sum().backward()
    (conv(ref_x) * g).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-12, atol=1e-12)


def test_padded_stem_is_the_convolution():
    conv = _frozen_conv(7, 3)
    x = torch.randn(2, 3, 15, 16, dtype=torch.float64)
    torch.testing.assert_close(PaddedStemConv(conv, 8)(x), conv(x), rtol=1e-12, atol=1e-12)


def test_stem_rewrites_reject_what_they_cannot_rewrite():
    trainable = torch.nn.Conv2d(3, 4, 7, stride=2, padding=3)
    with pytest.raises(ValueError, match="stem_s2d needs a frozen stem"):
        SpaceToDepthStemConv(trainable)
    with pytest.raises(ValueError, match="stem_channels needs a frozen stem"):
        PaddedStemConv(trainable, 8)
    with pytest.raises(ValueError, match="stride-2 convolution.*stride \\(1, 1\\)"):
        SpaceToDepthStemConv(_frozen_conv(3, 1, stride=1))
    with pytest.raises(ValueError, match="pads 3 input channels to more"):
        PaddedStemConv(_frozen_conv(7, 3), 3)
    dilated = torch.nn.Conv2d(3, 4, 3, stride=2, dilation=2).requires_grad_(False)
    with pytest.raises(ValueError, match="dilation \\(2, 2\\)"):
        SpaceToDepthStemConv(dilated)
