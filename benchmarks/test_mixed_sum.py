"""Kernel-level benchmark of the fused weighted sum against the PyTorch reference (pytest-benchmark).

    python -m pytest benchmarks/test_mixed_sum.py --benchmark-group-by=param:shape

Forward + backward of one DARTS edge (K candidates) at the sizes of a C=16 supernet's first cells. The reference
and the compiled op run the same inputs in one session, so their ratio is what to read.
"""
import pytest
import torch

from stacnas import fused

SHAPES = {"16x16x32x32": (16, 16, 32, 32), "64x32x16x16": (64, 32, 16, 16)}
BACKENDS = ["reference"] + (["cpp"] if fused.extension_error() is None else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_mixed_sum_forward_backward(benchmark, backend, shape):
    torch.manual_seed(0)
    outs = [torch.randn(SHAPES[shape], requires_grad=True) for _ in range(7)]
    w = torch.randn(7, requires_grad=True)
    grad = torch.randn(SHAPES[shape])

    def step():
        y = fused.mixed_sum(outs, w, backend=backend)
        torch.autograd.grad(y, [w, *outs], grad)

    benchmark(step)
