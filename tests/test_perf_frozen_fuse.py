"""The frozen prefix with folded norms and fused epilogues: the same function."""

import pytest
import torch

from clipbert.models.resnet import Bottleneck, FrozenBatchNorm2d, ResNetBackbone
from clipbert.perf.frozen_fuse import FusedBottleneck, conv_bias_relu, fuse_frozen_prefix
from clipbert.perf.stem import SpaceToDepthStemConv


def randomize_norms(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            c = m.num_features
            m.weight.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.copy_(torch.randn(c, generator=g))
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


def _frozen_block(in_ch: int, width: int, stride: int) -> Bottleneck:
    torch.manual_seed(in_ch + width + stride)
    block = Bottleneck(in_ch, width, stride, stride_in_1x1=True, frozen_bn=True).double()
    randomize_norms(block)
    return block.requires_grad_(False)


@pytest.mark.parametrize("in_ch,width,stride", [(16, 8, 1), (32, 8, 1), (16, 8, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_bottleneck_is_the_block(in_ch, width, stride, channels_last):
    block = _frozen_block(in_ch, width, stride)
    x = torch.randn(2, in_ch, 9, 10, dtype=torch.float64)
    if channels_last:
        block = block.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    want = block(x)
    got = FusedBottleneck(block)(x)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_fused_prefix_of_a_backbone_with_a_space_to_depth_stem_is_the_backbone():
    torch.manual_seed(0)
    backbone = ResNetBackbone(layers=(2, 1, 1, 1), width=8, freeze_at=2).double().eval()
    randomize_norms(backbone, seed=1)
    x = torch.randn(2, 3, 64, 48, dtype=torch.float64)
    want = backbone(x)
    backbone.conv1 = SpaceToDepthStemConv(backbone.conv1, 4)
    assert fuse_frozen_prefix(backbone) == 3  # the stem and res2's two blocks
    assert all(isinstance(b, FusedBottleneck) for b in backbone.layer1)
    assert isinstance(backbone.layer2[0], Bottleneck)  # trainable stages are left alone
    torch.testing.assert_close(backbone(x), want, rtol=1e-10, atol=1e-10)


def test_fusing_needs_frozen_convolutions_and_frozen_norms():
    block = Bottleneck(16, 8, 1, stride_in_1x1=True, frozen_bn=True)
    with pytest.raises(ValueError, match="needs frozen convolutions"):
        FusedBottleneck(block)
    with pytest.raises(ValueError, match="folds FrozenBatchNorm2d only, got BatchNorm2d"):
        FusedBottleneck(Bottleneck(16, 8, 1, stride_in_1x1=True, frozen_bn=False).requires_grad_(False))
    with pytest.raises(ValueError, match="freeze_at >= 1"):
        fuse_frozen_prefix(ResNetBackbone(layers=(1, 1, 1, 1), width=8, freeze_at=0))


def test_the_op_compiles_with_its_layout():
    # The fake kernel must give the real kernel's layout, or the compiled code around it would index the
    # output wrongly: compile a fused block with a pointwise op after it, in both layouts (inductor, CPU).
    block = _frozen_block(16, 8, 1).float()
    fused = FusedBottleneck(block)
    for channels_last in (False, True):
        x = torch.randn(2, 16, 6, 7)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        torch._dynamo.reset()
        fn = torch.compile(lambda t: fused(t) * 2 + 1, fullgraph=True)
        torch.testing.assert_close(fn(x), block(x) * 2 + 1, rtol=1e-4, atol=1e-4)
    torch.library.opcheck(
        conv_bias_relu,
        (
            torch.randn(2, 4, 5, 5),
            torch.randn(3, 4, 3, 3),
            torch.randn(3),
            torch.randn(2, 3, 5, 5),
            [1, 1],
            [1, 1],
        ),
    )


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cudnn_fused_convolutions_match_float64(dtype, channels_last):
    # On a GPU the op runs cuDNN's fused kernels (cudnn_convolution_relu / _add_relu): a wrong bias or
    # residual there would still time well, so check the values against float64 before the ablation does.
    block = _frozen_block(64, 16, 1)  # 64 -> 16 -> 64 channels: no shortcut convolution, residual = input
    shortcut = _frozen_block(32, 16, 1)  # 32 -> 64 channels: a folded shortcut convolution
    tol = {torch.float32: 5e-3, torch.bfloat16: 5e-2}[dtype]  # TF32 (about 1e-3 a layer) / bf16 vs float64
    for ref in (block, shortcut):
        x64 = torch.randn(2, ref.conv1.in_channels, 12, 10, dtype=torch.float64)
        want = ref(x64)
        fused = FusedBottleneck(ref).to("cuda", dtype)
        x = x64.to("cuda", dtype)
        if channels_last:
            fused = fused.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        got = fused(x)
        assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last) == channels_last
        err = (got.double().cpu() - want).norm() / want.norm()
        assert err < tol, f"{dtype} channels_last={channels_last}: relative error {err:.2e}"
