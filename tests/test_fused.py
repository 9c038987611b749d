"""The compiled mixed-sum op against the PyTorch reference: random data, odd shapes, non-contiguous inputs, fp64
gradcheck, opcheck. On CPU here (C++); the same tests run the CUDA kernels when a GPU is visible."""
import pytest
import torch

from stacnas import fused

pytestmark = pytest.mark.skipif(fused.extension_error() is not None, reason="stacnas._C is not built")

DEVICES = ["cpu"] + (["cuda"] if fused.cuda_kernels_built() and torch.cuda.is_available() else [])
SHAPES = [(5,), (3, 5, 7), (2, 17, 9, 11), (3, 7, 61, 67)]  # the last spans many elements per channel


def _backend(device):
    return "cuda" if device == "cuda" else "cpp"


def _inputs(shape, K, dtype, device, seed=0, contiguous=True, stats=True):
    g = torch.Generator().manual_seed(seed)
    if contiguous:
        xs = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(K)]
    else:  # same shape, transposed storage
        xs = [torch.randn(tuple(reversed(shape)), generator=g, dtype=torch.float64).permute(
            *reversed(range(len(shape)))) for _ in range(K)]
    w = torch.randn(K, generator=g, dtype=torch.float64)
    C = shape[1] if len(shape) >= 2 else 1
    mean = torch.randn(K, C, generator=g, dtype=torch.float64) if stats else None
    rstd = torch.rand(K, C, generator=g, dtype=torch.float64) + 0.5 if stats else None
    to = lambda t: None if t is None else t.to(device, dtype).requires_grad_()  # noqa: E731
    return [to(x) for x in xs], to(w), to(mean), to(rstd)


def _grads(out, inputs, grad):
    inputs = [t for t in inputs if t is not None]
    return torch.autograd.grad(out, inputs, grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("K", [1, 3, 10])
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("stats", [True, False])
def test_matches_reference_fp32(device, shape, K, contiguous, stats):
    xs, w, mean, rstd = _inputs(shape, K, torch.float32, device, contiguous=contiguous, stats=stats)
    y = fused.mixed_sum(xs, w, mean, rstd, backend=_backend(device))
    expected = fused.reference_mixed_sum(xs, w, mean, rstd)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(expected)
    ours = _grads(y, [*xs, w, mean, rstd], grad)
    theirs = _grads(expected, [*xs, w, mean, rstd], grad)
    # dw, dmean, drstd are sums over many elements: compare with float64 truth, within fp32 rounding of the terms
    exact = _grads(fused.reference_mixed_sum([x.double() for x in xs], w.double(),
                                             None if mean is None else mean.double(),
                                             None if rstd is None else rstd.double()),
                   [*xs, w, mean, rstd], grad.double())
    for i, (o, t, e) in enumerate(zip(ours, theirs, exact)):
        if i < K:  # dx_k = w_k rstd_k g: elementwise
            torch.testing.assert_close(o, t, rtol=1e-5, atol=1e-6)
        else:
            scale = (grad.double().abs().sum() * max(x.double().abs().max() for x in xs)).item()
            assert (o.double() - e.double()).abs().max() <= 1e-6 * scale
            assert (t.double() - e.double()).abs().max() <= 1e-6 * scale  # the bound is fair to PyTorch too


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("stats", [True, False])
def test_gradcheck_fp64(device, seed, stats):
    xs, w, mean, rstd = _inputs((2, 3, 5), 4, torch.float64, device, seed=seed, stats=stats)
    if stats:
        fn = lambda w, m, r, *x: fused.mixed_sum(list(x), w, m, r, backend=_backend(device))  # noqa: E731
        assert torch.autograd.gradcheck(fn, (w, mean, rstd, *xs))
    else:
        fn = lambda w, *x: fused.mixed_sum(list(x), w, backend=_backend(device))  # noqa: E731
        assert torch.autograd.gradcheck(fn, (w, *xs))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, K, stats", [((3, 5, 7), 2, True), ((2, 4, 3, 3), 5, False), ((4, 6), 3, True)])
def test_opcheck(device, shape, K, stats):
    xs, w, mean, rstd = _inputs(shape, K, torch.float32, device, stats=stats)
    torch.library.opcheck(torch.ops.stacnas.mixed_sum.default, (xs, w, mean, rstd))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_no_worse_than_torch(device, dtype):
    xs, w, mean, rstd = _inputs((4, 33, 17, 5), 6, torch.float32, device)
    exact = fused.reference_mixed_sum(xs, w, mean, rstd).detach()
    low = [t.detach().to(dtype) for t in (*xs, w, mean, rstd)]
    ours = fused.mixed_sum(low[:6], *low[6:], backend=_backend(device)).float()
    theirs = fused.reference_mixed_sum(low[:6], *low[6:]).float()
    assert (ours - exact).abs().max() <= 2 * (theirs - exact).abs().max()


def test_bad_arguments_are_named():
    xs, w, mean, rstd = _inputs((3, 4), 2, torch.float32, "cpu")
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="one entry per input"):
            torch.ops.stacnas.mixed_sum(xs, w[:1], None, None)
        with pytest.raises(RuntimeError, match="same shape"):
            torch.ops.stacnas.mixed_sum([xs[0], xs[1][:2]], w, None, None)
        with pytest.raises(RuntimeError, match=r"shape \(inputs, channels\) = \(2, 4\)"):
            torch.ops.stacnas.mixed_sum(xs, w, mean[:, :3], rstd[:, :3])
        with pytest.raises(RuntimeError, match="both mean and rstd"):
            torch.ops.stacnas.mixed_sum(xs, w, mean, None)


def test_backend_choice(monkeypatch):
    xs, w, _, _ = _inputs((3, 4), 2, torch.float32, "cpu", stats=False)
    monkeypatch.setenv("STACNAS_KERNELS", "reference")
    assert fused.resolve_backend(None, torch.device("cpu")) == "reference"
    monkeypatch.setenv("STACNAS_KERNELS", "auto")
    assert fused.resolve_backend(None, torch.device("cpu")) == "cpp"
    monkeypatch.setenv("STACNAS_KERNELS", "fastest")
    with pytest.raises(ValueError, match="STACNAS_KERNELS='fastest'"):
        fused.default_backend()
    message = "cannot run on cpu tensors" if fused.cuda_kernels_built() else "built without CUDA kernels"
    with pytest.raises(RuntimeError, match=message):
        fused.resolve_backend("cuda", torch.device("cpu"))


def test_works_under_torch_compile():
    xs, w, mean, rstd = [t.detach() if isinstance(t, torch.Tensor) else [x.detach() for x in t]
                         for t in _inputs((3, 5, 2), 3, torch.float32, "cpu")]
    compiled = torch.compile(lambda x, w, m, r: fused.mixed_sum(x, w, m, r, backend="cpp") * 2, fullgraph=True)
    torch.testing.assert_close(compiled(xs, w, mean, rstd), 2 * fused.reference_mixed_sum(xs, w, mean, rstd))
