"""relu(conv2d(x, w) + bias (+ residual)) as one op: cuDNN's fused epilogue on a GPU, with a backward.

Why an op: compiled, a convolution followed by its norm, the residual add and the ReLU is a cuDNN kernel
that writes the convolution's output and a pointwise kernel that reads it back and writes the activation.
cuDNN's fused kernels (`torch.cudnn_convolution_relu`, `torch.cudnn_convolution_add_relu`) write the
activation directly. Inductor cannot emit them (it calls cuDNN for the convolution only), so the op is a
custom op: a fake kernel gives compiled code its shape and layout, and its backward is the ReLU's mask and
`aten.convolution_backward`, which inductor calls as it does for any convolution.

Elsewhere (CPU, float64) the op runs F.conv2d plus the elementwise ops: the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def layout(x: torch.Tensor) -> torch.memory_format:
    """The layout the op computes and returns in: the input's (the fake kernel must agree with the real)."""
    nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if nhwc else torch.contiguous_format


@torch.library.custom_op("clipbert_perf::conv_bias_relu", mutates_args=())
def conv_bias_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
) -> torch.Tensor:
    """relu(conv2d(x, weight, stride, padding) + bias (+ residual)): [B, C, H, W] -> [B, O, H', W'].

    Computes in x's dtype (weight, bias and residual are cast to it); returns in x's layout.
    """
    fmt = layout(x)
    x = x.contiguous(memory_format=fmt)
    weight = weight.to(x.dtype).contiguous(memory_format=fmt)
    bias = bias.to(x.dtype)
    if residual is not None:
        residual = residual.to(x.dtype).contiguous(memory_format=fmt)
    if x.is_cuda and x.dtype != torch.float64:
        if residual is None:
            out = torch.cudnn_convolution_relu(x, weight, bias, stride, padding, [1, 1], 1)
        else:
            out = torch.cudnn_convolution_add_relu(x, weight, residual, 1.0, bias, stride, padding, [1, 1], 1)
    else:
        out = F.conv2d(x, weight, bias, stride, padding)
        out = F.relu(out if residual is None else out + residual)
    return out.contiguous(memory_format=fmt)


@conv_bias_relu.register_fake
def _(x, weight, bias, residual, stride, padding):
    b, _, h, w = x.shape
    o, _, kh, kw = weight.shape
    size = (b, o, (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1)
    return x.new_empty(size).contiguous(memory_format=layout(x))


def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, stride, padding = inputs
    # The output is the ReLU's mask source (out > 0 exactly where the pre-activation is): no extra tensor
    # is kept, and in a ResNet the output is the next convolution's input, held anyway.
    ctx.save_for_backward(x, weight, output)
    ctx.stride, ctx.padding = stride, padding
    ctx.bias_dtype = bias.dtype
    ctx.residual_dtype = None if residual is None else residual.dtype


def _backward(ctx, grad):
    x, weight, out = ctx.saved_tensors
    need_x, need_w, need_b, need_r = ctx.needs_input_grad[:4]
    # The op computed in x's dtype: the gradients do too, then go back to each input's dtype.
    w = weight.to(x.dtype)
    gz = torch.where(out > 0, grad.to(x.dtype), 0)  # [B, O, H', W']: through the ReLU
    dx, dw, db = torch.ops.aten.convolution_backward(
        gz, x, w, [w.shape[0]], ctx.stride, ctx.padding, [1, 1], False, [0, 0], 1, [need_x, need_w, need_b]
    )
    dw = None if dw is None else dw.to(weight.dtype)
    db = None if db is None else db.to(ctx.bias_dtype)
    dr = gz.to(ctx.residual_dtype) if need_r and ctx.residual_dtype is not None else None
    return dx, dw, db, dr, None, None


conv_bias_relu.register_autograd(_backward, setup_context=_setup_context)
