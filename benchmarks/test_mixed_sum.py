"""Kernel-level benchmark of the fused mixed sum against the PyTorch reference (pytest-benchmark).

    python -m pytest benchmarks/test_mixed_sum.py --benchmark-group-by=param:shape

Forward + backward of one DARTS edge (7 candidates) at the sizes of a C=16 supernet's first cells, plain and with
the trailing BNs folded (batch statistics and BN backward inside the op). The reference and the compiled op run
the same inputs in one session, so their ratio is what to read.
"""
import pytest
import torch

from stacnas import fused

SHAPES = {"16x16x32x32": (16, 16, 32, 32), "64x32x16x16": (64, 32, 16, 16)}
BACKENDS = ["reference"] + (["cpp"] if fused.extension_error() is None else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("folded", [False, True], ids=["plain", "bn-folded"])
def test_mixed_sum_forward_backward(benchmark, backend, shape, folded):
    """One DARTS edge without `none`: 7 terms, the BN-ending ones (all but skip) folded when `folded`."""
    torch.manual_seed(0)
    outs = [torch.randn(SHAPES[shape], requires_grad=True) for _ in range(7)]
    w = torch.randn(7, requires_grad=True)
    grad = torch.randn(SHAPES[shape])
    normalize = [folded and k != 2 for k in range(7)]

    def step():
        y, _, _ = fused.mixed_sum(outs, w, normalize, backend=backend)
        torch.autograd.grad(y, [w, *outs], grad)

    benchmark(step)
