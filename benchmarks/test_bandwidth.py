"""The fused mixed sum against the memory-bound floor: a forward pass moves at least (K+1)·N elements (each input
read once, y written once), a copy 2·N. extra_info holds the bytes each moves; a row's time over the copy's is the
ratio to read: (K+1)/2 times it is the share of the copy bandwidth the backend reaches."""
import pytest
import torch

from stacnas import fused

from harness import DEVICE, kernel_backends

K = 7  # a DARTS edge without `none`
ELEMENTS = 64 * 2**20 if DEVICE.type == "cuda" else 4 * 2**20
SHAPE = (ELEMENTS // (64 * 256), 64, 16, 16)


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(0)
    return [torch.randn(SHAPE, device=DEVICE) for _ in range(K)], torch.randn(K, device=DEVICE)


def test_copy(timed, inputs):
    src = inputs[0][0]
    dst = torch.empty_like(src)
    timed(lambda: dst.copy_(src), "bandwidth", bytes_moved=2 * src.numel() * src.element_size())


@pytest.mark.parametrize("backend", kernel_backends("mixed_sum_into"))
@pytest.mark.parametrize("folded", [False, True], ids=["plain", "bn-folded"])
def test_mixed_sum_forward(timed, inputs, backend, folded):
    xs, w = inputs
    normalize = [folded and k % 2 == 0 for k in range(K)]
    out = torch.empty_like(xs[0])
    with torch.no_grad():
        timed(lambda: fused.mixed_sum_into(xs, w, normalize, None, None, True, 1e-5, out, backend), "bandwidth",
              bytes_moved=(K + 1) * xs[0].numel() * xs[0].element_size())
