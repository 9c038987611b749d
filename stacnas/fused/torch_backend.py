"""The `torch` backend: every fused op written with PyTorch's own (ATen) ops. It runs on any device, and its
`reference_mixed_sum`, differentiated by autograd, is the oracle every other backend is tested against."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def channels(x: torch.Tensor) -> int:
    """Channels are dim 1 of (N, C, ...)."""
    return x.shape[1] if x.dim() >= 2 else 1


def per_channel(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(C,) statistics broadcast against x (N, C, ...)."""
    return t.view(1, -1, *([1] * (x.dim() - 2))) if x.dim() >= 2 else t


def wide(t: torch.Tensor) -> torch.Tensor:
    """t in float32 when it is half precision (bf16, fp16): every sum and statistic accumulates there, as the C++,
    CUDA and Triton kernels' do; other dtypes are kept."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def statistics_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of x's BatchNorm statistics: float32 for half precision (as PyTorch's BN keeps them under autocast)."""
    return torch.promote_types(x.dtype, torch.float32)


def _var_mean(x: torch.Tensor):
    return torch.var_mean(x, dim=[0] + list(range(2, x.dim())), correction=0)


def reference_mixed_sum(x, w, normalize, running_mean=None, running_var=None, training=True, eps=1e-5):
    """(y, mean, var) with autograd through PyTorch ops: what DARTS' MixedOp computes with each folded BN applied."""
    C = channels(x[0])
    means, variances, y = [], [], 0
    for k, (xk, wk, norm) in enumerate(zip(x, w, normalize)):
        if not norm:
            mean, var, o = xk.new_zeros(C), xk.new_ones(C), xk
        else:
            if training:
                var, mean = _var_mean(xk)
            else:
                mean, var = running_mean[k], running_var[k]
            o = (xk - per_channel(mean, xk)) * per_channel(torch.rsqrt(var + eps), xk)
        means.append(mean.detach())
        variances.append(var.detach())
        y = y + wk * o
    return y, torch.stack(means), torch.stack(variances)


def _wide_all(tensors):
    return [None if t is None else wide(t) for t in tensors]


def mixed_sum_into(x, w, normalize, running_mean, running_var, training, eps, out):
    with torch.no_grad():
        y, mean, var = reference_mixed_sum(_wide_all(x), wide(w), normalize, running_mean, running_var, training, eps)
        out.copy_(y)
    return mean.to(w.dtype), var.to(w.dtype)


def mixed_sum_backward(grad, x, w, normalize, mean, var, training, eps):
    with torch.enable_grad():
        leaves = [wide(t).detach().requires_grad_() for t in [*x, w]]
        # in eval the running statistics are mean and var; in training they are recomputed from x, equal
        y = reference_mixed_sum(leaves[:-1], leaves[-1], normalize, mean, var, training, eps)[0]
        found = torch.autograd.grad(y, leaves, wide(grad))
    return [g.to(x[0].dtype) for g in found[:-1]], found[-1].to(w.dtype)


def batch_norm_stats(x):
    var, mean = _var_mean(wide(x.detach()))
    return mean, var


def batch_norm_relu_backward(grad, x, mean, var, training, eps):
    with torch.enable_grad():
        z = wide(x).detach().requires_grad_()
        if training:
            var, mean = _var_mean(z)
        act = torch.relu((z - per_channel(mean, z)) * per_channel(torch.rsqrt(var + eps), z))
        return torch.autograd.grad(act, z, wide(grad))[0].to(x.dtype)


def max_pool2d_backward_from_output(grad, input, output, kernel_size, stride, padding):
    # PyTorch's max-pool backward needs the indices: found again by pooling the input once more
    _, indices = torch.nn.functional.max_pool2d(input, kernel_size, stride, padding, return_indices=True)
    # overlapping windows add up in float32 for half-precision grads, as the C++ and CUDA kernels do
    return torch.ops.aten.max_pool2d_with_indices_backward(wide(grad), wide(input), kernel_size, stride, padding,
                                                           [1, 1], False, indices).to(input.dtype)


def depthwise_conv2d_weight_grad(grad, input, kernel_size, stride, padding, dilation):
    weight = input.new_empty(input.shape[1], 1, *kernel_size)
    return torch.ops.aten.convolution_backward(grad, input, weight, None, stride, padding, dilation, False, [0, 0],
                                               input.shape[1], [False, True, False])[1]


def step_geometry(geometry, i: int):
    """(stride, padding, dilation, groups) of conv_chain_backward's step i, from its 7 numbers in `geometry`."""
    g = list(geometry[7 * i:7 * i + 7])
    return g[0:2], g[2:4], g[4:6], g[6]


def conv_chain_backward(grad, inputs, weights, geometry, relu, mean, var, training, eps, input_grad, weight_grad,
                        bias_grad):
    """Each step recomputed from its kept input and differentiated by autograd (see stacnas.fused)."""
    steps = len(inputs)
    grad_weights, grad_biases = [None] * steps, [None] * steps
    with torch.enable_grad():
        for i in reversed(range(steps)):
            z, w = inputs[i].detach().requires_grad_(), weights[i].detach().requires_grad_()
            if mean[i] is None:
                a = torch.relu(z) if relu[i] else z
            else:
                var_i, mean_i = _var_mean(wide(z)) if training[i] else (var[i], mean[i])
                # normalized in the statistics' dtype, convolved in z's (bf16 under autocast, as the forward was)
                a = torch.relu((z - per_channel(mean_i, z)) * per_channel(torch.rsqrt(var_i + eps[i]), z)).to(z.dtype)
            out = F.conv2d(a, w, None, *step_geometry(geometry, i))
            grad_z, grad_w = torch.autograd.grad(out, [z, w], grad)
            grad_weights[i] = grad_w if weight_grad[i] else None
            grad_biases[i] = grad.sum([0, 2, 3]) if bias_grad[i] else None
            grad = grad_z
    return (grad if input_grad else None), grad_weights, grad_biases
