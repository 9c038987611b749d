"""The fused ops of stacnas, each behind one dispatcher that asks the registry which backend computes it.

    y, mean, var = mixed_sum(x, w, normalize, running_mean, running_var, training, eps, out=None)
    y = sum_k w_k * o_k,   o_k = (x_k - mean_k) / sqrt(var_k + eps)  if normalize[k]  else x_k

A normalized term is the input of a trailing BatchNorm(affine=False) folded into the sum: its statistics are the
batch's in training (returned, so the caller updates the BN's running statistics once) and the running ones in eval;
the BN output o_k never exists. With every flag False it is DARTS' weighted sum of candidate outputs. mean and var
are (K, C) (0 and 1 on plain rows) and carry no gradient. With `out` (a node's channel slice of its cell's output)
y is written there and is `out`; autograd refuses an `out` that is a view of another tensor (a CellOutput slot is
not one).

`mixed_sum` is differentiable (its autograd is MixedSum, the same for every backend); the other functions are the
kernels themselves, without autograd: the forward pass `mixed_sum_into`, its backward `mixed_sum_backward`, and the
pieces the lean supernet computes its ops' backward with. Every function takes `backend` (see stacnas.fused.registry;
None: STACNAS_KERNELS, else automatic) and checks its arguments first (stacnas.fused.checks).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import checks
from .registry import (OPS, available_backends, default_backend, implementation, op_backends, resolve_backend,
                       unavailable)
from .torch_backend import reference_mixed_sum

__all__ = ["OPS", "available_backends", "batch_norm_relu_backward", "batch_norm_stats", "conv_chain_backward",
           "default_backend", "depthwise_conv2d_weight_grad", "max_pool2d_backward_from_output", "mixed_sum",
           "mixed_sum_backward", "mixed_sum_into", "op_backends", "reference_mixed_sum", "resolve_backend",
           "unavailable"]


def _run(op: str, backend: str | None, device: torch.device, *args):
    return implementation(op, resolve_backend(backend, device), device)(*args)


class MixedSum(torch.autograd.Function):
    """mixed_sum's autograd, for every backend: forward by the backend's mixed_sum_into (into a new tensor or into
    `out`), backward by its mixed_sum_backward."""

    @staticmethod
    def forward(ctx, backend, out, w, normalize, running_mean, running_var, training, eps, *x):
        y = torch.empty_like(x[0], memory_format=torch.contiguous_format) if out is None else out
        mean, var = mixed_sum_into(x, w, normalize, running_mean, running_var, training, eps, y, backend)
        if out is not None:
            ctx.mark_dirty(out)
        ctx.mark_non_differentiable(mean, var)
        ctx.save_for_backward(w, mean, var, *x)
        ctx.normalize, ctx.training, ctx.eps, ctx.backend = normalize, training, eps, backend
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _grad_mean, _grad_var):
        w, mean, var, *x = ctx.saved_tensors
        grad_x, grad_w = mixed_sum_backward(grad, x, w, ctx.normalize, mean, var, ctx.training, ctx.eps, ctx.backend)
        return (None, None, grad_w, None, None, None, None, None, *grad_x)


def mixed_sum(x, w, normalize=None, running_mean=None, running_var=None, training=True, eps=1e-5,
              backend: str | None = None, out: torch.Tensor | None = None):
    """(y, mean, var): see the module docstring. normalize defaults to all False (a plain weighted sum)."""
    normalize = [False] * len(x) if normalize is None else [bool(n) for n in normalize]
    backend = resolve_backend(backend, x[0].device)
    return MixedSum.apply(backend, out, w, normalize, running_mean, running_var, training, eps, *x)


def mixed_sum_into(x, w, normalize, running_mean, running_var, training, eps, out, backend: str | None = None):
    """(mean, var) of mixed_sum, its y written into `out` (shaped like x[0]; each sample's (C, ...) block contiguous,
    as in a node's channel slice of its cell's output). The forward kernel: no autograd."""
    checks.mixed_sum(x, w, normalize, running_mean, running_var, training, out)
    return _run("mixed_sum_into", backend, x[0].device, list(x), w, [bool(n) for n in normalize], running_mean,
                running_var, training, eps, out)


def mixed_sum_backward(grad, x, w, normalize, mean, var, training, eps, backend: str | None = None):
    """(grad_x, grad_w) of mixed_sum given the statistics its forward returned."""
    checks.mixed_sum_backward(grad, x, w, normalize, mean, var)
    return _run("mixed_sum_backward", backend, x[0].device, grad, list(x), w, [bool(n) for n in normalize], mean,
                var, training, eps)


def batch_norm_stats(x: torch.Tensor, backend: str | None = None):
    """(mean, biased var) per channel of x (N, C, ...), without autograd: what BatchNorm normalizes with in training."""
    checks.batch_norm_stats(x)
    return _run("batch_norm_stats", backend, x.device, x.detach())


def batch_norm_relu_backward(grad, x, mean, var, training, eps, backend: str | None = None):
    """Gradient w.r.t. x of ReLU((x - mean) / sqrt(var + eps)), through the batch statistics when training."""
    checks.batch_norm_relu_backward(grad, x, mean, var)
    return _run("batch_norm_relu_backward", backend, x.device, grad, x, mean, var, training, eps)


def max_pool2d_backward_from_output(grad, input, output, kernel_size, stride, padding, backend: str | None = None):
    """Gradient of max_pool2d w.r.t. its input, each window's argmax found by comparing input and output (the
    first maximum in row-major order, or the last NaN, as PyTorch's kernels choose): no indices need be kept."""
    checks.max_pool2d_backward_from_output(grad, input, output, kernel_size, stride, padding)
    return _run("max_pool2d_backward_from_output", backend, input.device, grad, input, output, kernel_size, stride,
                padding)


def depthwise_conv2d_weight_grad(grad, input, kernel_size, stride, padding, dilation, backend: str | None = None):
    """Weight gradient of conv2d(input, weight, stride, padding, dilation, groups=channels) with one filter per
    channel (the C++ kernel on CPUs: PyTorch's is 5–20× slower than the forward conv there)."""
    checks.depthwise_conv2d_weight_grad(grad, input, kernel_size, stride, padding, dilation)
    return _run("depthwise_conv2d_weight_grad", backend, input.device, grad, input, kernel_size, stride, padding,
                dilation)


def conv_chain_backward(grad, inputs, weights, geometry, relu, mean, var, training, eps, input_grad, weight_grad,
                        bias_grad, backend: str | None = None):
    """(grad_input, grad_weights, grad_biases) of a chain of convolutions (the lean supernet's ConvChain) from the
    inputs its convs read, the activations recomputed. Step i computes out_i = conv2d(a_i, weights[i]) (+ a bias),
    where z_i = inputs[i] (z_{i+1} = out_i) and a_i = ReLU(z_i) when relu[i], z_i otherwise, or, where mean[i] and
    var[i] are given, ReLU((z_i - mean_i) / sqrt(var_i + eps[i])) (a BatchNorm(affine=False) then ReLU, the gradient
    through its batch statistics when training[i]). geometry holds 7 numbers per step: stride, padding, dilation (two
    each) and groups. grad is the last out's; a gradient not asked for (input_grad, weight_grad[i], bias_grad[i])
    is None."""
    checks.conv_chain_backward(grad, inputs, weights, geometry, relu, mean, var, training, eps, weight_grad,
                               bias_grad)
    return _run("conv_chain_backward", backend, grad.device, grad, inputs, weights, geometry, relu, mean, var,
                training, eps, input_grad, weight_grad, bias_grad)
