"""The `triton` backend: the launchers of stacnas.kernels (kernels/) registered as custom ops, with the fake
implementations torch.compile traces with. torch.library.custom_op, not triton_op: the latter fails opcheck's fake
tensor test under TRITON_INTERPRET=1."""
from __future__ import annotations

import torch

from ..kernels import mixed_sum as kernels
from . import checks
from .torch_backend import channels


@torch.library.custom_op("stacnas_triton::mixed_sum_into", mutates_args={"out"})
def mixed_sum_into(x: list[torch.Tensor], w: torch.Tensor, normalize: list[bool], running_mean: torch.Tensor | None,
                   running_var: torch.Tensor | None, training: bool, eps: float,
                   out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    checks.mixed_sum(x, w, normalize, running_mean, running_var, training, out)
    return kernels.mixed_sum_into(x, w, normalize, running_mean, running_var, training, eps, out)


@mixed_sum_into.register_fake
def _(x, w, normalize, running_mean, running_var, training, eps, out):
    return w.new_empty(len(x), channels(x[0])), w.new_empty(len(x), channels(x[0]))


@torch.library.custom_op("stacnas_triton::mixed_sum_backward", mutates_args=())
def mixed_sum_backward(grad: torch.Tensor, x: list[torch.Tensor], w: torch.Tensor, normalize: list[bool],
                       mean: torch.Tensor, var: torch.Tensor, training: bool,
                       eps: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    checks.mixed_sum_backward(grad, x, w, normalize, mean, var)
    return kernels.mixed_sum_backward(grad, x, w, normalize, mean, var, training, eps)


@mixed_sum_backward.register_fake
def _(grad, x, w, normalize, mean, var, training, eps):
    return [torch.empty_like(grad, memory_format=torch.contiguous_format) for _ in x], torch.empty_like(w)
