"""The lean supernet's CPU conv routes against PyTorch's (CPU tensors on every machine).

Input and filter gradients of the depthwise and pointwise convs inside DARTS' sep_conv and dil_conv, at the size of
a C=16 supernet's first cells (batch 16, 16 channels, 32×32): `aten` is torch.ops.aten.convolution_backward, `lean`
is stacnas.fused.conv_chain_backward of that one conv (the compiled kernels' routes); each conv is a group of its
own, whose rows' ratio is what to read; and skip_connect on a reducing edge (FactorizedReduce), forward and
backward.
"""
import pytest
import torch

from stacnas import fused

# (kernel, dilation, groups): sep_conv 3×3 and 5×5 depthwise, dil_conv 3×3 and 5×5 depthwise, the pointwise 1×1
CONVS = {"dw3": (3, 1, 16), "dw5": (5, 1, 16), "dil3": (3, 2, 16), "dil5": (5, 2, 16), "pw": (1, 1, 1)}


@pytest.mark.parametrize("route", ["aten", "lean"])
@pytest.mark.parametrize("conv", sorted(CONVS))
def test_conv_backward(benchmark, route, conv):
    k, dilation, groups = CONVS[conv]
    padding = dilation * (k - 1) // 2
    torch.manual_seed(0)
    x = torch.randn(16, 16, 32, 32)
    weight = torch.randn(16, 16 // groups, k, k)
    grad = torch.randn(16, 16, 32, 32)
    benchmark.group = f"conv_backward {conv}"
    if route == "aten":
        benchmark(lambda: torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], [padding] * 2,
                                                              [dilation] * 2, False, [0, 0], groups,
                                                              [True, True, False]))
    else:
        geometry = [1, 1, padding, padding, dilation, dilation, groups]
        benchmark(lambda: fused.conv_chain_backward(grad, [x], [weight], geometry, [False], [None], [None], [False],
                                                    [0.0], True, [True], [False]))


@pytest.mark.parametrize("route", ["aten", "lean"])
def test_factorized_reduce(benchmark, route):
    """skip_connect on a reducing edge (FactorizedReduce up to its BN) at a C=16 supernet's first reduction cell
    (batch 16, 32 channels, 16×16), forward and backward: `aten` is DARTS' ReLU, two 1×1 stride-2 nn.Conv2d and the
    concat under autograd, `lean` stacnas.nn.routes.factorized_reduce (two matrix products into one output)."""
    from stacnas.nn.routes import factorized_reduce

    torch.manual_seed(0)
    convs = [torch.nn.Conv2d(32, 16, 1, stride=2, bias=False) for _ in range(2)]
    h = torch.randn(16, 32, 16, 16, requires_grad=True)
    grad = torch.randn(16, 32, 8, 8)
    benchmark.group = "factorized_reduce forward+backward"

    def aten():
        a = torch.relu(h)
        return torch.cat([convs[0](a), convs[1](a[:, :, 1:, 1:])], dim=1)

    run = aten if route == "aten" else lambda: factorized_reduce(convs, h, torch.relu(h.detach()))
    benchmark(lambda: torch.autograd.backward(run(), grad))
