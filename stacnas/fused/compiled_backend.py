"""The `cpp` and `cuda` backends: the ops of the compiled extension stacnas._C, whose schemas and CPU kernels are in
csrc/fused_ops.cpp, CUDA kernels in csrc/cuda/ and conv_chain_backward (for both devices) in csrc/conv_chain.cpp.
This module loads it, says why when it cannot, and adds the fake (meta) implementations torch.compile traces
with."""
from __future__ import annotations

import torch

from .torch_backend import channels, statistics_dtype


def _load() -> str | None:
    """None when stacnas._C loaded and matches this torch, else why not."""
    try:
        from .. import _C
    except ImportError as err:
        return (f"stacnas._C is not built or does not load ({err}); reinstall with "
                "`pip install --no-build-isolation -e .`")
    running = torch.__version__.split("+")[0]
    if _C.torch_version != running:
        return (f"stacnas._C was built for torch {_C.torch_version}, this is torch {running}; reinstall with "
                "`pip install --no-build-isolation -e .`")
    return None


LOAD_ERROR = _load()


def cuda_built() -> bool:
    """Whether stacnas._C holds CUDA kernels (it was built with FORCE_CUDA=1 or TORCH_CUDA_ARCH_LIST set)."""
    return LOAD_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key("stacnas::mixed_sum_into", "CUDA")


if LOAD_ERROR is None:
    @torch.library.register_fake("stacnas::mixed_sum_into")
    def _(x, w, normalize, running_mean, running_var, training, eps, out):
        torch._check(len(x) == w.shape[0], lambda: "mixed_sum_into: one weight per input")
        stats = w.new_empty(len(x), channels(x[0]))
        return stats, torch.empty_like(stats)

    @torch.library.register_fake("stacnas::mixed_sum_backward")
    def _(grad, x, w, normalize, mean, var, training, eps):
        return [torch.empty_like(grad, memory_format=torch.contiguous_format) for _ in x], torch.empty_like(w)

    @torch.library.register_fake("stacnas::batch_norm_stats")
    def _(x):
        return (x.new_empty(channels(x), dtype=statistics_dtype(x)),
                x.new_empty(channels(x), dtype=statistics_dtype(x)))

    @torch.library.register_fake("stacnas::batch_norm_relu_backward")
    def _(grad, x, mean, var, training, eps):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("stacnas::depthwise_conv2d_weight_grad")
    def _(grad, input, kernel_size, stride, padding, dilation):
        return input.new_empty(input.shape[1], 1, *kernel_size)

    @torch.library.register_fake("stacnas::conv_chain_backward")
    def _(grad, inputs, weights, geometry, relu, mean, var, training, eps, input_grad, weight_grad, bias_grad):
        return (torch.empty_like(inputs[0], memory_format=torch.contiguous_format) if input_grad else None,
                [torch.empty_like(w) if needed else None for w, needed in zip(weights, weight_grad)],
                [w.new_empty(w.shape[0]) if needed else None for w, needed in zip(weights, bias_grad)])

    @torch.library.register_fake("stacnas::max_pool2d_backward_from_output")
    def _(grad, input, output, kernel_size, stride, padding):
        return torch.empty_like(input, memory_format=torch.contiguous_format)


def mixed_sum_into(x, w, normalize, running_mean, running_var, training, eps, out):
    return torch.ops.stacnas.mixed_sum_into(list(x), w, list(normalize), running_mean, running_var, training, eps,
                                            out)


def mixed_sum_backward(grad, x, w, normalize, mean, var, training, eps):
    return torch.ops.stacnas.mixed_sum_backward(grad, list(x), w, list(normalize), mean, var, training, eps)


def batch_norm_stats(x):
    return torch.ops.stacnas.batch_norm_stats(x.detach())


def batch_norm_relu_backward(grad, x, mean, var, training, eps):
    return torch.ops.stacnas.batch_norm_relu_backward(grad, x, mean, var, training, eps)


def max_pool2d_backward_from_output(grad, input, output, kernel_size, stride, padding):
    return torch.ops.stacnas.max_pool2d_backward_from_output(grad, input, output, kernel_size, stride, padding)


def depthwise_conv2d_weight_grad(grad, input, kernel_size, stride, padding, dilation):
    return torch.ops.stacnas.depthwise_conv2d_weight_grad(grad, input, kernel_size, stride, padding, dilation)


def conv_chain_backward(grad, inputs, weights, geometry, relu, mean, var, training, eps, input_grad, weight_grad,
                        bias_grad):
    return torch.ops.stacnas.conv_chain_backward(grad, list(inputs), list(weights), list(geometry), list(relu),
                                                 list(mean), list(var), list(training), list(eps), input_grad,
                                                 list(weight_grad), list(bias_grad))
