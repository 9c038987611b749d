"""The compiled weighted-sum op against the PyTorch reference (CPU here; the same tests run on CUDA when a GPU
is visible)."""
import pytest
import torch

from stacnas import fused

pytestmark = pytest.mark.skipif(fused.extension_error() is not None, reason="stacnas._C is not built")

DEVICES = ["cpu"] + (["cuda"] if fused.cuda_kernels_built() and torch.cuda.is_available() else [])
SHAPES = [(1,), (3, 5, 7), (2, 17, 9, 11), (70001,)]  # the last spans several partial-sum blocks


def _inputs(shape, K, dtype, device, seed=0, contiguous=True):
    g = torch.Generator().manual_seed(seed)
    if contiguous:
        outs = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(K)]
    else:  # same values, but transposed storage
        outs = [torch.randn(tuple(reversed(shape)), generator=g, dtype=torch.float64).permute(
            *reversed(range(len(shape)))) for _ in range(K)]
    w = torch.randn(K, generator=g, dtype=torch.float64)
    return [o.to(device, dtype) for o in outs], w.to(device, dtype)


def _reference_grads(outs, w, grad):
    outs = [o.detach().clone().requires_grad_() for o in outs]
    w = w.detach().clone().requires_grad_()
    fused.reference_weighted_sum(outs, w).backward(grad)
    return [o.grad for o in outs], w.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("K", [1, 3, 9])
@pytest.mark.parametrize("contiguous", [True, False])
def test_matches_reference_fp32(device, shape, K, contiguous):
    outs, w = _inputs(shape, K, torch.float32, device, contiguous=contiguous)
    outs = [o.requires_grad_() for o in outs]
    w.requires_grad_()
    y = fused.weighted_sum(outs, w, backend="cuda" if device == "cuda" else "cpp")
    expected = fused.reference_weighted_sum(outs, w)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(expected)
    y.backward(grad)
    ref_o, ref_w = _reference_grads(outs, w, grad)
    for got, want in zip([o.grad for o in outs], ref_o):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # dL/dw_k is a dot product over every element: compare with the fp64 value, within fp32 rounding of its terms
    exact = torch.stack([(grad.double() * o.double()).sum() for o in outs])
    mass = torch.stack([(grad.double() * o.double()).abs().sum() for o in outs])
    assert torch.all((w.grad.double() - exact).abs() <= 1e-6 * mass + 1e-6)
    assert torch.all((ref_w.double() - exact).abs() <= 1e-6 * mass + 1e-6)  # the bound is fair to the reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradcheck_fp64(device, seed):
    outs, w = _inputs((2, 3, 5), 4, torch.float64, device, seed=seed)
    args = [w.requires_grad_()] + [o.requires_grad_() for o in outs]
    assert torch.autograd.gradcheck(lambda w, *o: fused.weighted_sum(list(o), w, backend="cpp"
                                                                      if device == "cpu" else "cuda"), args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, K", [((3, 5, 7), 2), ((2, 4, 3, 3), 5)])
def test_opcheck(device, shape, K):
    outs, w = _inputs(shape, K, torch.float32, device)
    torch.library.opcheck(torch.ops.stacnas.weighted_sum.default, ([o.requires_grad_() for o in outs],
                                                                    w.requires_grad_()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_no_worse_than_torch(device, dtype):
    outs, w = _inputs((4, 33, 17), 6, torch.float32, device)
    exact = fused.reference_weighted_sum(outs, w)
    low = [o.to(dtype) for o in outs]
    ours = fused.weighted_sum(low, w.to(dtype), backend="cuda" if device == "cuda" else "cpp").float()
    theirs = fused.reference_weighted_sum(low, w.to(dtype)).float()
    assert (ours - exact).abs().max() <= 2 * (theirs - exact).abs().max()


def test_bad_arguments_are_named():
    outs, w = _inputs((3, 4), 2, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="one entry per output"):
        torch.ops.stacnas.weighted_sum(outs, w[:1])
    with pytest.raises(RuntimeError, match="same shape"):
        torch.ops.stacnas.weighted_sum([outs[0], outs[1][:2]], w)


def test_backend_choice(monkeypatch):
    outs, w = _inputs((3, 4), 2, torch.float32, "cpu")
    monkeypatch.setenv("STACNAS_KERNELS", "reference")
    assert fused.default_backend() == "reference"
    torch.testing.assert_close(fused.weighted_sum(outs, w), fused.reference_weighted_sum(outs, w))
    monkeypatch.setenv("STACNAS_KERNELS", "fastest")
    with pytest.raises(ValueError, match="STACNAS_KERNELS='fastest'"):
        fused.default_backend()


def test_compiles_with_torch_compile():
    outs, w = _inputs((3, 5), 3, torch.float32, "cpu")
    compiled = torch.compile(lambda o, w: fused.weighted_sum(o, w, backend="cpp") * 2, fullgraph=True)
    torch.testing.assert_close(compiled(outs, w), 2 * fused.reference_weighted_sum(outs, w))
