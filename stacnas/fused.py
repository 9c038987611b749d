"""The fused ops: the compiled extension stacnas._C behind PyTorch custom ops, and their pure-PyTorch reference.

`weighted_sum(outputs, weights)` computes sum_k weights[k] * outputs[k]. The schema lives in csrc/ (TORCH_LIBRARY);
this module adds `register_fake` (torch.compile) and `register_autograd`.
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


def extension_error() -> str | None:
    """None when the compiled extension loaded, else why not."""
    return _EXT_ERROR


def cuda_kernels_built() -> bool:
    return _EXT_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key("stacnas::weighted_sum", "CUDA")


def reference_weighted_sum(outputs, weights):
    """The oracle: exactly what DARTS' MixedOp computes."""
    return sum(w * o for w, o in zip(weights, outputs))


if _EXT_ERROR is None:
    @torch.library.register_fake("stacnas::weighted_sum")
    def _(outputs, weights):
        torch._check(len(outputs) == weights.shape[0], lambda: "weighted_sum: one weight per output")
        return torch.empty_like(outputs[0], memory_format=torch.contiguous_format)

    @torch.library.register_fake("stacnas::weighted_sum_backward")
    def _(grad, outputs, weights):
        return ([torch.empty_like(grad, memory_format=torch.contiguous_format) for _ in outputs],
                torch.empty_like(weights))

    def _setup_context(ctx, inputs, output):
        outputs, weights = inputs
        ctx.save_for_backward(weights, *outputs)

    def _backward(ctx, grad):
        weights, *outputs = ctx.saved_tensors
        grad_outputs, grad_weights = torch.ops.stacnas.weighted_sum_backward(grad, outputs, weights)
        return list(grad_outputs), grad_weights

    torch.library.register_autograd("stacnas::weighted_sum", _backward, setup_context=_setup_context)


BACKENDS = ("auto", "reference", "cpp", "cuda")


def default_backend() -> str:
    """STACNAS_KERNELS overrides the automatic choice."""
    backend = os.environ.get("STACNAS_KERNELS", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"STACNAS_KERNELS={backend!r} is not one of {', '.join(BACKENDS)}")
    return backend


def weighted_sum(outputs, weights, backend: str | None = None):
    backend = backend or default_backend()
    if backend == "auto":
        compiled = _EXT_ERROR is None and (outputs[0].device.type == "cpu" or cuda_kernels_built())
        backend = "reference" if not compiled else ("cuda" if outputs[0].is_cuda else "cpp")
    if backend == "reference":
        return reference_weighted_sum(outputs, weights)
    if _EXT_ERROR is not None:
        raise RuntimeError(_EXT_ERROR)
    return torch.ops.stacnas.weighted_sum(list(outputs), weights)
