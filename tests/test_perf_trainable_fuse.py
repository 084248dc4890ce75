"""Trainable blocks with folded norms and fused epilogues: the same function and the same gradients."""

import copy

import pytest
import torch
from test_perf_frozen_fuse import randomize_norms

from clipbert.models.resnet import Bottleneck, ResNetBackbone
from clipbert.perf.conv_epilogue import conv_bias_relu
from clipbert.perf.frozen_fuse import FusedBottleneck, fuse_frozen_prefix
from clipbert.perf.trainable_fuse import FoldedBottleneck, fuse_trainable_stages


def _block(in_ch: int, width: int, stride: int, stride_in_1x1: bool = True) -> Bottleneck:
    torch.manual_seed(in_ch + width + stride)
    block = Bottleneck(in_ch, width, stride, stride_in_1x1=stride_in_1x1, frozen_bn=True).double()
    randomize_norms(block)
    return block


def _value_and_grads(fn, x, upstream, params=None):
    x = x.detach().requires_grad_(True)
    out = fn(x)
    params = [p for p in (fn.parameters() if params is None else params) if p.requires_grad]
    grads = torch.autograd.grad(out, [x, *params], upstream)
    return out.detach(), grads


@pytest.mark.parametrize(
    "in_ch,width,stride,stride_in_1x1",
    [(32, 8, 1, True), (16, 8, 1, True), (16, 8, 2, True), (16, 8, 2, False)],
    ids=["identity", "shortcut", "stride2_msra", "stride2_torchvision"],
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_folded_block_is_the_block_with_its_gradients(in_ch, width, stride, stride_in_1x1, channels_last):
    block = _block(in_ch, width, stride, stride_in_1x1)
    x = torch.randn(2, in_ch, 9, 10, dtype=torch.float64)
    if channels_last:
        block = block.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    upstream = torch.randn_like(block(x))
    want, want_grads = _value_and_grads(block, x, upstream)
    folded = FoldedBottleneck(block)
    got, got_grads = _value_and_grads(folded, x, upstream)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert len(got_grads) == len(want_grads) == 1 + 3 + int(block.downsample is not None)  # x, convs
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)


def test_rewrite_keeps_parameters_and_state_dict_and_leaves_frozen_stages():
    torch.manual_seed(0)
    backbone = ResNetBackbone(layers=(2, 2, 1, 1), width=8, freeze_at=2).double()
    randomize_norms(backbone, seed=1)
    names = [n for n, p in backbone.named_parameters() if p.requires_grad]
    params = [id(p) for p in backbone.parameters() if p.requires_grad]
    keys = list(backbone.state_dict())
    x = torch.randn(2, 3, 64, 48, dtype=torch.float64)
    want = backbone(x)
    assert fuse_frozen_prefix(backbone) == 3  # the frozen ones first, as the optimized path does
    assert fuse_trainable_stages(backbone) == 4  # layer2's two blocks, layer3's and layer4's one
    assert all(isinstance(b, FusedBottleneck) for b in backbone.layer1)
    trainable = (backbone.layer2, backbone.layer3, backbone.layer4)
    assert all(isinstance(b, FoldedBottleneck) for s in trainable for b in s)
    assert [n for n, p in backbone.named_parameters() if p.requires_grad] == names
    assert [id(p) for p in backbone.parameters() if p.requires_grad] == params
    assert [k for k in backbone.state_dict() if not k.startswith(("conv1", "bn1", "layer1"))] == [
        k for k in keys if not k.startswith(("conv1", "bn1", "layer1"))
    ]
    torch.testing.assert_close(backbone(x), want, rtol=1e-10, atol=1e-10)


def test_rewrite_needs_frozen_norms_and_names_the_block():
    backbone = ResNetBackbone(layers=(1, 1, 1, 1), width=8, frozen_bn=False, freeze_at=2)
    with pytest.raises(ValueError, match=r"FrozenBatchNorm2d only, got BatchNorm2d at layer2\.0\.conv1"):
        fuse_trainable_stages(backbone)


def test_compiled_block_matches_eager():
    # Inductor sees the op through its fake kernel (layout) and its backward through
    # aten.convolution_backward: values and every gradient must match the eager block (CPU, fp32).
    # NCHW here; tests/test_bench_paths.py compiles the whole channels_last loss with every fusion.
    block = _block(16, 8, 2).float()
    folded = FoldedBottleneck(block)
    torch._dynamo.reset()
    fn = torch.compile(lambda t: folded(t) * 2 + 1, fullgraph=True)
    x, upstream = torch.randn(2, 16, 10, 9), torch.randn(2, 32, 5, 5)
    want, want_grads = _value_and_grads(lambda t: block(t) * 2 + 1, x, upstream, block.parameters())
    got, got_grads = _value_and_grads(fn, x, upstream, folded.parameters())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_autocast_computes_in_bf16_and_weight_gradients_stay_fp32():
    block = _block(16, 8, 1).float()
    folded = FoldedBottleneck(block)
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = folded(x)
        ref = block(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=5e-2, atol=5e-2)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in folded.parameters())
    assert x.grad.dtype == torch.float32


def test_op_autograd_registration():
    def args(residual: bool, grad: bool):
        torch.manual_seed(3)
        t = [torch.randn(2, 4, 5, 5), torch.randn(3, 4, 3, 3), torch.randn(3)]
        t.append(torch.randn(2, 3, 3, 3) if residual else None)
        t = [None if v is None else v.requires_grad_(grad) for v in t]
        return (*t, [2, 2], [1, 1])

    for residual in (False, True):
        torch.library.opcheck(conv_bias_relu, args(residual, grad=True))
        *tensors, stride, padding = args(residual, grad=True)
        tensors = [None if v is None else v.double().detach().requires_grad_(True) for v in tensors]
        torch.autograd.gradcheck(conv_bias_relu, (*tensors, stride, padding))


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cudnn_fused_block_gradients_match_float64(dtype, channels_last):
    # On a GPU the forward is cuDNN's fused kernels and the backward aten.convolution_backward: check the
    # value and every gradient against the float64 block before the ablation times them. At these sizes bf16
    # alone is several % off in the gradients (the unfused block too, measured on the CPU: up to 1e-1), so
    # the bound is the unfused block's own error in the same dtype and layout, plus a floor; a wrong bias,
    # shortcut or mask is off by order 1.
    floor = {torch.float32: 2e-3, torch.bfloat16: 2e-2}[dtype]  # TF32 is about 1e-3 a layer

    def errors(module, x64, upstream, want):
        x = x64.to("cuda", dtype)
        module = module.to("cuda", dtype)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        got, grads = _value_and_grads(module, x, upstream.to("cuda", dtype))
        assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
        return [((g.double().cpu() - w).norm() / w.norm()).item() for g, w in zip([got, *grads], want)]

    for block in (_block(64, 16, 1), _block(32, 16, 2)):
        x64 = torch.randn(2, block.conv1.in_channels, 12, 10, dtype=torch.float64)
        upstream = torch.randn_like(block(x64))
        want, want_grads = _value_and_grads(block, x64, upstream)
        unfused = errors(copy.deepcopy(block), x64, upstream, [want, *want_grads])
        folded = FoldedBottleneck(block)
        fused = errors(folded, x64, upstream, [want, *want_grads])
        names = ["out", "x", *[n for n, _ in folded.named_parameters()]]
        for name, err, ref in zip(names, fused, unfused, strict=True):
            assert err <= 2 * ref + floor, (
                f"{name} {dtype} channels_last={channels_last}: {err:.2e} (unfused {ref:.2e})"
            )
