"""The fused mixed sum behind one dispatcher: the compiled extension stacnas._C (C++ CPU, CUDA), the Triton kernels
(`stacnas.kernels`), and the pure-PyTorch reference.

    mixed_sum(x, w, mean=None, rstd=None) = sum_k w_k * (x_k - mean_k) * rstd_k      (mean, rstd: (K, C) per channel)

With mean/rstd None it is DARTS' weighted sum of candidate outputs; with the batch statistics of the candidates'
trailing BatchNorm(affine=False) it folds that BN in (x_k is the BN's input, the normalized output never exists).
The schema lives in csrc/ (TORCH_LIBRARY); this module adds `register_fake` (torch.compile) and `register_autograd`.
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


def _channel_view(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(C,) statistics broadcast against x (N, C, ...)."""
    return t.view(1, -1, *([1] * (x.dim() - 2))) if x.dim() >= 2 else t


def reference_mixed_sum(x, w, mean=None, rstd=None):
    """The oracle: sum_k w_k (x_k - mean_k) rstd_k with PyTorch ops and autograd."""
    if mean is None:
        return sum(wk * xk for wk, xk in zip(w, x))
    return sum(wk * ((xk - _channel_view(m, xk)) * _channel_view(r, xk)) for wk, xk, m, r in zip(w, x, mean, rstd))


if _EXT_ERROR is None:
    @torch.library.register_fake("stacnas::mixed_sum")
    def _(x, w, mean, rstd):
        torch._check(len(x) == w.shape[0], lambda: "mixed_sum: one weight per input")
        return torch.empty_like(x[0], memory_format=torch.contiguous_format)

    @torch.library.register_fake("stacnas::mixed_sum_backward")
    def _(grad, x, w, mean, rstd):
        channels = x[0].shape[1] if x[0].dim() >= 2 else 1
        return ([torch.empty_like(grad, memory_format=torch.contiguous_format) for _ in x], torch.empty_like(w),
                w.new_empty(len(x), channels), w.new_empty(len(x), channels))

    def _setup_context(ctx, inputs, output):
        x, w, mean, rstd = inputs
        ctx.has_stats = mean is not None
        ctx.save_for_backward(w, mean, rstd, *x)

    def _backward(ctx, grad):
        w, mean, rstd, *x = ctx.saved_tensors
        grad_x, grad_w, grad_mean, grad_rstd = torch.ops.stacnas.mixed_sum_backward(grad, x, w, mean, rstd)
        if not ctx.has_stats:
            grad_mean = grad_rstd = None
        return list(grad_x), grad_w, grad_mean, grad_rstd

    torch.library.register_autograd("stacnas::mixed_sum", _backward, setup_context=_setup_context)


def default_backend() -> str:
    """STACNAS_KERNELS overrides the automatic choice."""
    backend = os.environ.get("STACNAS_KERNELS", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"STACNAS_KERNELS={backend!r} is not one of {', '.join(BACKENDS)}")
    return backend


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The concrete backend for tensors on `device`: the compiled kernel of that device if built, else the reference."""
    backend = backend or default_backend()
    if backend == "auto":
        if _EXT_ERROR is None and (device.type == "cpu" or (device.type == "cuda" and cuda_kernels_built())):
            return "cpp" if device.type == "cpu" else "cuda"
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
    return backend


def mixed_sum(x, w, mean=None, rstd=None, backend: str | None = None):
    backend = resolve_backend(backend, x[0].device)
    if backend == "reference":
        return reference_mixed_sum(x, w, mean, rstd)
    if backend == "triton":
        from .kernels.mixed_sum import triton_mixed_sum

        return triton_mixed_sum(list(x), w, mean, rstd)
    return torch.ops.stacnas.mixed_sum(list(x), w, mean, rstd)
