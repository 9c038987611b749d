"""The arguments of every fused op, checked before any backend runs (the dispatcher and the Triton custom ops call
these; the C++ and CUDA kernels check the same in csrc/ for direct calls): shapes, dtypes and devices as ATen checks
them, so that no backend reads or writes outside its tensors or returns garbage. A bad argument is a ValueError
naming the op and the problem."""
from __future__ import annotations

import torch

from .torch_backend import step_geometry


def _require(ok: bool, op: str, message) -> None:
    """A ValueError naming op unless ok; message is a string, or a function giving it (the checks run on every call of
    every fused op: a message formatted only on failure costs nothing)."""
    if not ok:
        raise ValueError(f"{op}: {message() if callable(message) else message}")


def _same_kind(t: torch.Tensor, like: torch.Tensor, op: str, name: str) -> None:
    _require(isinstance(t, torch.Tensor), op, lambda: f"{name} must be a tensor")
    _require(like.is_floating_point(), op, lambda: f"expects floating point tensors, got {like.dtype}")
    _require(t.dtype == like.dtype and t.device == like.device, op,
             lambda: f"{name} must have the input's dtype and device ({like.dtype} on {like.device}), got {t.dtype} "
                     f"on {t.device}")


def _channels(x: torch.Tensor) -> int:
    return x.shape[1] if x.dim() >= 2 else 1


def _statistics(stats, K: int, x0: torch.Tensor, op: str, names: str) -> None:
    for t in stats:
        _require(isinstance(t, torch.Tensor) and tuple(t.shape) == (K, _channels(x0)), op,
                 lambda: f"{names} must have shape (inputs, channels) = ({K}, {_channels(x0)})")
        _require(t.is_floating_point() and t.device == x0.device, op,
                 lambda: f"{names} must be floating point, on the inputs' device")


def mixed_sum(x, w, normalize, running_mean, running_var, training, out=None) -> None:
    op = "mixed_sum"
    _require(len(x) > 0 and all(isinstance(t, torch.Tensor) for t in x), op, "needs a non-empty list of tensors")
    K = len(x)
    _require(isinstance(w, torch.Tensor) and w.dim() == 1 and w.shape[0] == K, op,
             lambda: f"weights must be 1-D with one entry per input, got {tuple(getattr(w, 'shape', ()))} for {K} "
                     "inputs")
    _require(len(normalize) == K, op,
             lambda: f"normalize needs one flag per input, got {len(normalize)} for {K} inputs")
    for t in x:
        _require(t.shape == x[0].shape, op, lambda: f"all inputs must have the same shape, got {tuple(t.shape)} and "
                                            f"{tuple(x[0].shape)}")
        _same_kind(t, x[0], op, "every input")
    # w may be wider than the inputs (float32 weights of bf16 inputs under autocast): every backend reads it widened
    _require(isinstance(w, torch.Tensor) and w.is_floating_point() and w.device == x[0].device, op,
             lambda: f"w must be floating point, on the inputs' device ({x[0].device}), got {w.dtype} on {w.device}")
    if not training and any(normalize):
        _require(running_mean is not None and running_var is not None, op,
                 "eval mode with normalized inputs needs running_mean and running_var")
        _statistics((running_mean, running_var), K, x[0], op, "running statistics")
    if out is not None:
        _same_kind(out, x[0], op, "out")
        _require(out.shape == x[0].shape, op, lambda: f"out must have the inputs' shape {tuple(x[0].shape)}, got "
                                              f"{tuple(out.shape)}")
        _require(out.is_contiguous() or (out.dim() >= 2 and out[0].is_contiguous()
                                         and out.stride(0) >= out[0].numel()), op,
                 "out must hold each sample's (C, ...) block contiguously, as a channel slice of a contiguous "
                 "tensor does")


def mixed_sum_backward(grad, x, w, normalize, mean, var) -> None:
    mixed_sum(x, w, normalize, None, None, True)
    op = "mixed_sum_backward"
    _same_kind(grad, x[0], op, "grad")
    _require(grad.shape == x[0].shape, op, lambda: f"grad shape {tuple(grad.shape)} differs from the inputs' "
                                           f"{tuple(x[0].shape)}")
    _statistics((mean, var), len(x), x[0], op, "mean and var")


def batch_norm_stats(x) -> None:
    _require(x.dim() >= 2, "batch_norm_stats",
             lambda: f"expects (N, C, ...) with at least 2 dimensions, got {tuple(x.shape)}")
    _same_kind(x, x, "batch_norm_stats", "x")


def batch_norm_relu_backward(grad, x, mean, var) -> None:
    op = "batch_norm_relu_backward"
    batch_norm_stats(x)
    _same_kind(grad, x, op, "grad")
    _require(grad.shape == x.shape, op, lambda: f"grad and x must have the same shape, got {tuple(grad.shape)} and "
                                        f"{tuple(x.shape)}")
    for t in (mean, var):
        _require(t.dim() == 1 and t.shape[0] == x.shape[1], op,
                 lambda: f"mean and var must hold one value per channel ({x.shape[1]}), got {tuple(t.shape)}")
        _require(t.is_floating_point() and t.device == x.device, op, "mean and var must be floating point, on x's "
                                                                     "device")


def _window_output(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """The output size of a window (a conv's or a pool's) sliding along one dimension of `size`."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    return span // stride + 1 if span >= 0 else 0


def _window(op: str, input, result, kernel_size, stride, padding, dilation, name: str) -> None:
    """result (N, C, OH, OW) is what sliding the window over input (N, C, H, W) gives."""
    _require(input.dim() == 4 and result.dim() == 4 and result.shape[:2] == input.shape[:2], op,
             lambda: f"expects 4-D input and {name} with the same batch and channels, got {tuple(input.shape)} and "
             f"{tuple(result.shape)}")
    _require(all(len(v) == 2 for v in (kernel_size, stride, padding, dilation)), op,
             "kernel_size, stride, padding and dilation need two entries each")
    for i in range(2):
        _require(kernel_size[i] > 0 and stride[i] > 0 and dilation[i] > 0 and padding[i] >= 0, op,
                 lambda: f"needs kernel_size, stride and dilation above 0 and padding at least 0, got "
                         f"{list(kernel_size)}, {list(stride)}, {list(dilation)}, {list(padding)}")
        expected = _window_output(input.shape[2 + i], kernel_size[i], stride[i], padding[i], dilation[i])
        _require(result.shape[2 + i] == expected, op,
                 lambda: f"{name} {tuple(result.shape)} is not what the window gives on {tuple(input.shape)} "
                         f"({expected} along dim {2 + i})")


def max_pool2d_backward_from_output(grad, input, output, kernel_size, stride, padding) -> None:
    op = "max_pool2d_backward_from_output"
    _same_kind(output, input, op, "output")
    _same_kind(grad, input, op, "grad")
    _require(grad.shape == output.shape, op,
             lambda: f"grad must be shaped like the output, got {tuple(grad.shape)} and {tuple(output.shape)}")
    _require(all(2 * p <= k for p, k in zip(padding, kernel_size)), op,
             lambda: f"padding must be at most half the kernel size, got {list(padding)} for {list(kernel_size)}")
    _window(op, input, output, kernel_size, stride, padding, [1, 1], "output")


def depthwise_conv2d_weight_grad(grad, input, kernel_size, stride, padding, dilation) -> None:
    op = "depthwise_conv2d_weight_grad"
    _same_kind(grad, input, op, "grad")
    _window(op, input, grad, kernel_size, stride, padding, dilation, "grad")


def conv_chain_backward(grad, inputs, weights, geometry, relu, mean, var, training, eps, weight_grad,
                        bias_grad) -> None:
    op = "conv_chain_backward"
    steps = len(inputs)
    _require(steps > 0 and all(isinstance(t, torch.Tensor) for t in [*inputs, *weights]), op,
             "needs a non-empty list of inputs and one weight each")
    for name, values in (("weights", weights), ("relu", relu), ("mean", mean), ("var", var), ("training", training),
                         ("eps", eps), ("weight_grad", weight_grad), ("bias_grad", bias_grad)):
        _require(len(values) == steps, op, lambda: f"{name} needs one entry per input ({steps}), got {len(values)}")
    _require(len(geometry) == 7 * steps, op, lambda: f"geometry needs 7 numbers per step (stride, padding, dilation, "
                                                     f"groups), got {len(geometry)} for {steps}")
    kind = (grad.dtype, grad.device)
    _require(grad.is_floating_point() and all((t.dtype, t.device) == kind for t in [*inputs, *weights]), op,
             lambda: f"every input and weight must have grad's dtype and device ({grad.dtype} on {grad.device})")
    for i, (z, w, out) in enumerate(zip(inputs, weights, [*inputs[1:], grad])):
        _conv_step(op, i, z, w, out, step_geometry(geometry, i))
        _require((mean[i] is None) == (var[i] is None), op, lambda: f"step {i} needs both mean and var, or neither")
        if mean[i] is not None:
            _require(all(isinstance(t, torch.Tensor) and t.shape == (z.shape[1],) and t.is_floating_point()
                         and t.device == z.device for t in (mean[i], var[i])), op,
                     lambda: f"step {i}: mean and var must hold one value per input channel ({z.shape[1]}), on its "
                             "device")


def _conv_step(op: str, i: int, z, w, out, geometry) -> None:
    """out (4-D) is what conv2d(z, w) with this (stride, padding, dilation, groups) gives."""
    stride, padding, dilation, groups = geometry
    _require(z.dim() == w.dim() == out.dim() == 4, op,
             lambda: f"step {i}: expects 4-D tensors, got {tuple(z.shape)}, {tuple(w.shape)}, {tuple(out.shape)}")
    _require(groups > 0 and z.shape[1] == w.shape[1] * groups and w.shape[0] % groups == 0, op,
             lambda: f"step {i}: weight {tuple(w.shape)} with groups={groups} does not fit input {tuple(z.shape)}")
    _require(min(*stride, *dilation) > 0 and min(padding) >= 0, op,
             lambda: f"step {i}: needs stride and dilation above 0 and padding at least 0, got {stride}, {dilation}, "
                     f"{padding}")
    expected = (z.shape[0], w.shape[0], *(_window_output(z.shape[2 + d], w.shape[2 + d], stride[d], padding[d],
                                                        dilation[d]) for d in range(2)))
    _require(out.shape == expected, op, lambda: f"step {i}: its output {tuple(out.shape)} is not what the conv gives "
                                                f"on {tuple(z.shape)} ({expected})")
