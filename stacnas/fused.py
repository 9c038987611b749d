"""The fused ops behind one dispatcher: the compiled extension stacnas._C (C++ CPU, CUDA), the Triton kernels
(`stacnas.kernels`), and the pure-PyTorch reference.

    y, mean, var = mixed_sum(x, w, normalize, running_mean, running_var, training, eps)
    y = sum_k w_k * o_k,   o_k = (x_k - mean_k) / sqrt(var_k + eps)  if normalize[k]  else x_k
    mean, var = mixed_sum_into(x, w, normalize, running_mean, running_var, training, eps, out)  (y written into out)

A normalized term is the input of a trailing BatchNorm(affine=False) folded into the sum: its statistics are the
batch's in training (returned, so the caller updates the BN's running statistics once) and the running ones in eval;
the BN output o_k never exists. With every flag False it is DARTS' weighted sum of candidate outputs. mean and var
are (K, C) (0 and 1 on plain rows) and carry no gradient.

The schemas live in csrc/ (TORCH_LIBRARY); this module adds `register_fake` (torch.compile) and `register_autograd`.
"""
from __future__ import annotations

import os

import torch

_EXT_ERROR: str | None = None
try:
    from . import _C  # noqa: F401  (loading the library registers torch.ops.stacnas.*)
except ImportError as err:  # pragma: no cover - depends on the build
    _EXT_ERROR = (f"stacnas._C is not built or does not load ({err}); reinstall with "
                  "`pip install --no-build-isolation -e .`")

BACKENDS = ("auto", "reference", "cpp", "cuda", "triton")


def extension_error() -> str | None:
    """None when the compiled extension loaded, else why not."""
    return _EXT_ERROR


def cuda_kernels_built() -> bool:
    return _EXT_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key("stacnas::mixed_sum", "CUDA")


def mixed_sum_autograd(backward_op):
    """(setup_context, backward) for register_autograd of a mixed_sum op whose backward op is `backward_op`
    (the compiled one here, the Triton one in stacnas.kernels): mean and var carry no gradient."""

    def setup_context(ctx, inputs, output):
        x, w, normalize, _, _, training, eps = inputs
        _, mean, var = output
        ctx.mark_non_differentiable(mean, var)
        ctx.normalize, ctx.training, ctx.eps = list(normalize), training, eps
        ctx.save_for_backward(w, mean, var, *x)

    def backward(ctx, grad, _grad_mean, _grad_var):
        w, mean, var, *x = ctx.saved_tensors
        grad_x, grad_w = backward_op(grad, x, w, ctx.normalize, mean, var, ctx.training, ctx.eps)
        return list(grad_x), grad_w, None, None, None, None, None

    return setup_context, backward


def _channels(x: torch.Tensor) -> int:
    return x.shape[1] if x.dim() >= 2 else 1


def _per_channel(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(C,) statistics broadcast against x (N, C, ...)."""
    return t.view(1, -1, *([1] * (x.dim() - 2))) if x.dim() >= 2 else t


def reference_mixed_sum(x, w, normalize, running_mean=None, running_var=None, training=True, eps=1e-5):
    """The oracle, with PyTorch ops and autograd: what DARTS' MixedOp computes with each folded BN applied."""
    C = _channels(x[0])
    means, variances, y = [], [], 0
    for k, (xk, wk, norm) in enumerate(zip(x, w, normalize)):
        if not norm:
            mean, var, o = xk.new_zeros(C), xk.new_ones(C), xk
        else:
            if training:
                dims = [0] + list(range(2, xk.dim()))
                var, mean = torch.var_mean(xk, dim=dims, correction=0)
            else:
                mean, var = running_mean[k], running_var[k]
            o = (xk - _per_channel(mean, xk)) * _per_channel(torch.rsqrt(var + eps), xk)
        means.append(mean.detach())
        variances.append(var.detach())
        y = y + wk * o
    return y, torch.stack(means), torch.stack(variances)


if _EXT_ERROR is None:
    @torch.library.register_fake("stacnas::mixed_sum")
    def _(x, w, normalize, running_mean, running_var, training, eps):
        torch._check(len(x) == w.shape[0], lambda: "mixed_sum: one weight per input")
        stats = w.new_empty(len(x), _channels(x[0]))
        return torch.empty_like(x[0], memory_format=torch.contiguous_format), stats, torch.empty_like(stats)

    @torch.library.register_fake("stacnas::mixed_sum_into")
    def _(x, w, normalize, running_mean, running_var, training, eps, out):
        torch._check(len(x) == w.shape[0], lambda: "mixed_sum_into: one weight per input")
        stats = w.new_empty(len(x), _channels(x[0]))
        return stats, torch.empty_like(stats)

    @torch.library.register_fake("stacnas::mixed_sum_backward")
    def _(grad, x, w, normalize, mean, var, training, eps):
        return [torch.empty_like(grad, memory_format=torch.contiguous_format) for _ in x], torch.empty_like(w)

    @torch.library.register_fake("stacnas::batch_norm_stats")
    def _(x):
        return x.new_empty(_channels(x)), x.new_empty(_channels(x))

    @torch.library.register_fake("stacnas::batch_norm_relu_backward")
    def _(grad, x, mean, var, training, eps):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("stacnas::depthwise_conv2d_weight_grad")
    def _(grad, input, kernel_size, stride, padding, dilation):
        return input.new_empty(input.shape[1], 1, *kernel_size)

    @torch.library.register_fake("stacnas::max_pool2d_backward_from_output")
    def _(grad, input, output, kernel_size, stride, padding):
        return torch.empty_like(input, memory_format=torch.contiguous_format)

    _setup_context, _backward = mixed_sum_autograd(torch.ops.stacnas.mixed_sum_backward)
    torch.library.register_autograd("stacnas::mixed_sum", _backward, setup_context=_setup_context)


def default_backend() -> str:
    """STACNAS_KERNELS overrides the automatic choice."""
    backend = os.environ.get("STACNAS_KERNELS", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"STACNAS_KERNELS={backend!r} is not one of {', '.join(BACKENDS)}")
    return backend


def triton_usable(device: torch.device) -> str | None:
    """None when the Triton kernels can run on `device`, else why not."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton runs on CPU tensors only in its interpreter: set TRITON_INTERPRET=1 before starting Python"
    if device.type not in ("cpu", "cuda"):
        return f"Triton kernels do not run on {device.type} tensors"
    return None


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The concrete backend for tensors on `device`. auto: the compiled kernel of that device if built, else Triton
    on a GPU, else the reference."""
    backend = backend or default_backend()
    if backend == "auto":
        if _EXT_ERROR is None and (device.type == "cpu" or (device.type == "cuda" and cuda_kernels_built())):
            return "cpp" if device.type == "cpu" else "cuda"
        if device.type == "cuda" and triton_usable(device) is None:
            return "triton"
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend in ("cpp", "cuda"):
        if _EXT_ERROR is not None:
            raise RuntimeError(_EXT_ERROR)
        if backend == "cuda" and not cuda_kernels_built():
            raise RuntimeError("kernel backend 'cuda' asked for, but stacnas._C was built without CUDA kernels; "
                               "rebuild with FORCE_CUDA=1")
        if (backend == "cuda") != (device.type == "cuda"):
            raise RuntimeError(f"kernel backend {backend!r} cannot run on {device.type} tensors")
    if backend == "triton" and (reason := triton_usable(device)) is not None:
        raise RuntimeError(f"kernel backend 'triton': {reason}")
    return backend


def mixed_sum(x, w, normalize=None, running_mean=None, running_var=None, training=True, eps=1e-5,
              backend: str | None = None):
    """(y, mean, var): see the module docstring. normalize defaults to all False (a plain weighted sum)."""
    normalize = [False] * len(x) if normalize is None else [bool(n) for n in normalize]
    backend = resolve_backend(backend, x[0].device)
    if backend == "reference":
        return reference_mixed_sum(x, w, normalize, running_mean, running_var, training, eps)
    if backend == "triton":
        from .kernels.mixed_sum import triton_mixed_sum

        return triton_mixed_sum(list(x), w, normalize, running_mean, running_var, training, eps)
    return torch.ops.stacnas.mixed_sum(list(x), w, normalize, running_mean, running_var, training, eps)


def mixed_sum_into(x, w, normalize, running_mean, running_var, training, eps, out, backend: str | None = None):
    """(mean, var) of mixed_sum, its y written into `out` (shaped like x[0]; each sample's (C, ...) block
    contiguous, as in a node's channel slice of its cell's output). Not differentiable: stacnas.lean wraps it."""
    normalize = [bool(n) for n in normalize]
    backend = resolve_backend(backend, x[0].device)
    if backend == "reference":
        with torch.no_grad():
            y, mean, var = reference_mixed_sum(x, w, normalize, running_mean, running_var, training, eps)
            out.copy_(y)
        return mean, var
    if backend == "triton":
        from .kernels.mixed_sum import triton_mixed_sum_into

        return triton_mixed_sum_into(x, w, normalize, running_mean, running_var, training, eps, out)
    return torch.ops.stacnas.mixed_sum_into(list(x), w, normalize, running_mean, running_var, training, eps, out)


def mixed_sum_backward(grad, x, w, normalize, mean, var, training, eps, backend: str | None = None):
    """(grad_x, grad_w) of mixed_sum given the statistics its forward returned."""
    normalize = [bool(n) for n in normalize]
    backend = resolve_backend(backend, x[0].device)
    if backend == "reference":
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in [*x, w]]
            # in eval the running statistics are mean and var; in training they are recomputed from x, equal
            y = reference_mixed_sum(leaves[:-1], leaves[-1], normalize, mean, var, training, eps)[0]
            found = torch.autograd.grad(y, leaves, grad)
        return list(found[:-1]), found[-1]
    if backend == "triton":
        from .kernels.mixed_sum import triton_mixed_sum_backward

        return triton_mixed_sum_backward(grad, x, w, normalize, mean, var, training, eps)
    return torch.ops.stacnas.mixed_sum_backward(grad, list(x), w, normalize, mean, var, training, eps)


def max_pool2d_backward_from_output(grad, input, output, kernel_size, stride, padding):
    """Gradient of max_pool2d w.r.t. its input, each window's argmax found by comparing input and output (the
    first maximum in row-major order, or the last NaN, as PyTorch's kernels choose): no indices need be kept."""
    if _EXT_ERROR is None and (input.device.type == "cpu" or cuda_kernels_built()):
        return torch.ops.stacnas.max_pool2d_backward_from_output(grad, input, output, kernel_size, stride, padding)
    _, indices = torch.nn.functional.max_pool2d(input, kernel_size, stride, padding, return_indices=True)
    return torch.ops.aten.max_pool2d_with_indices_backward(grad, input, kernel_size, stride, padding, [1, 1], False,
                                                           indices)


def depthwise_conv2d_weight_grad(grad, input, kernel_size, stride, padding, dilation):
    """Weight gradient of conv2d(input, weight, stride, padding, dilation, groups=channels) with one filter per
    channel: the C++ kernel on CPUs (PyTorch's is 5–20× slower than the forward conv there), else PyTorch's."""
    if _EXT_ERROR is None and input.device.type == "cpu":
        return torch.ops.stacnas.depthwise_conv2d_weight_grad(grad, input, kernel_size, stride, padding, dilation)
    weight = input.new_empty(input.shape[1], 1, *kernel_size)
    return torch.ops.aten.convolution_backward(grad, input, weight, None, stride, padding, dilation, False, [0, 0],
                                               input.shape[1], [False, True, False])[1]


def _compiled_for(device: torch.device) -> bool:
    return _EXT_ERROR is None and (device.type == "cpu" or (device.type == "cuda" and cuda_kernels_built()))


def batch_norm_stats(x: torch.Tensor):
    """(mean, biased var) per channel of x (N, C, ...), without autograd: what BatchNorm normalizes with in training."""
    if _compiled_for(x.device):
        return torch.ops.stacnas.batch_norm_stats(x.detach())
    var, mean = torch.var_mean(x.detach(), dim=[0] + list(range(2, x.dim())), correction=0)
    return mean, var


def batch_norm_relu_backward(grad, x, mean, var, training, eps):
    """Gradient w.r.t. x of ReLU((x - mean) / sqrt(var + eps)), through the batch statistics when training."""
    if _compiled_for(x.device):
        return torch.ops.stacnas.batch_norm_relu_backward(grad, x, mean, var, training, eps)
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        if training:
            var_, mean_ = torch.var_mean(x, dim=[0] + list(range(2, x.dim())), correction=0)
        else:
            mean_, var_ = mean, var
        act = torch.relu((x - _per_channel(mean_, x)) * _per_channel(torch.rsqrt(var_ + eps), x))
        return torch.autograd.grad(act, x, grad)[0]
