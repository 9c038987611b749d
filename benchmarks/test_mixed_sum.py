"""The fused mixed sum, forward + backward, per backend (the torch backend is PyTorch's own ops: the baseline).

One DARTS edge without `none` (7 candidates) at the sizes of a C=16 supernet's first cells, plain and with the
trailing BNs folded (batch statistics and BN backward inside the op).
"""
import pytest
import torch

from stacnas import fused

from harness import DEVICE, kernel_backends

SHAPES = {"16x16x32x32": (16, 16, 32, 32), "64x32x16x16": (64, 32, 16, 16)}


@pytest.mark.parametrize("backend", kernel_backends("mixed_sum_into"))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("folded", [False, True], ids=["plain", "bn-folded"])
def test_mixed_sum_forward_backward(timed, backend, shape, folded):
    """7 terms, the BN-ending ones (all but skip) folded when `folded`."""
    torch.manual_seed(0)
    outs = [torch.randn(SHAPES[shape], device=DEVICE, requires_grad=True) for _ in range(7)]
    w = torch.randn(7, device=DEVICE, requires_grad=True)
    grad = torch.randn(SHAPES[shape], device=DEVICE)
    normalize = [folded and k != 2 for k in range(7)]

    def step():
        y, _, _ = fused.mixed_sum(outs, w, normalize, backend=backend)
        torch.autograd.grad(y, [w, *outs], grad)

    timed(step, f"mixed_sum {shape} {'bn-folded' if folded else 'plain'}")
