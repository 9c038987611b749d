"""The Triton mixed-sum kernels against the PyTorch reference (under TRITON_INTERPRET=1 without a GPU: small
shapes)."""
import os

import pytest
import torch

from stacnas import fused

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(fused.triton_usable(torch.device(DEVICE)) is not None,
                                reason=str(fused.triton_usable(torch.device(DEVICE))))

CASES = [((3, 5, 7), [True, False, True, True, False]), ((2, 3, 4, 5), [False, False]), ((4, 6), [True])]


def _inputs(shape, K, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [(torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1).to(DEVICE, dtype).requires_grad_()
          for _ in range(K)]
    w = torch.randn(K, generator=g, dtype=torch.float64).to(DEVICE, dtype).requires_grad_()
    rm = torch.randn(K, shape[1], generator=g, dtype=torch.float64).to(DEVICE, dtype)
    rv = (torch.rand(K, shape[1], generator=g, dtype=torch.float64) + 0.5).to(DEVICE, dtype)
    return xs, w, rm, rv


@pytest.mark.parametrize("shape, normalize", CASES)
@pytest.mark.parametrize("training", [True, False])
def test_matches_reference(shape, normalize, training):
    xs, w, rm, rv = _inputs(shape, len(normalize), torch.float32)
    y, mean, var = fused.mixed_sum(xs, w, normalize, rm, rv, training, backend="triton")
    y_ref, mean_ref, var_ref = fused.reference_mixed_sum(xs, w, normalize, rm, rv, training)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var, var_ref, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(y)
    for ours, theirs in zip(torch.autograd.grad(y, [*xs, w], grad), torch.autograd.grad(y_ref, [*xs, w], grad)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape, normalize", [((2, 3, 4), [True, False, True]), ((2, 2, 3), [False, False])])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_fp64(shape, normalize, training):
    xs, w, rm, rv = _inputs(shape, len(normalize), torch.float64, seed=1)

    def fn(w, *x):
        return fused.mixed_sum(list(x), w, normalize, rm, rv, training, backend="triton")[0]

    assert torch.autograd.gradcheck(fn, (w, *xs))


def test_opcheck():
    from stacnas.kernels.mixed_sum import _mixed_sum

    xs, w, rm, rv = _inputs((3, 4, 5), 3, torch.float32)
    torch.library.opcheck(_mixed_sum, (xs, w, [True, False, True], rm, rv, True, 1e-5))


def test_cpu_needs_the_interpreter(monkeypatch):
    if DEVICE == "cuda":
        pytest.skip("the interpreter rule is about CPU tensors")
    monkeypatch.setitem(os.environ, "TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        fused.resolve_backend("triton", torch.device("cpu"))


@pytest.mark.parametrize("training", [True, False])
def test_mixed_sum_into_writes_only_its_slice(training):
    from stacnas.kernels.mixed_sum import _mixed_sum_into

    xs, w, rm, rv = _inputs((3, 4, 5), 3, torch.float32)
    buffer = torch.full((3, 12, 5), float("nan"), device=DEVICE)
    out = buffer[:, 4:8]
    mean, var = fused.mixed_sum_into(xs, w, [True, False, True], rm, rv, training, 1e-5, out, backend="triton")
    y_ref = fused.reference_mixed_sum(xs, w, [True, False, True], rm, rv, training)[0]
    torch.testing.assert_close(out, y_ref, rtol=1e-5, atol=1e-5)
    assert buffer[:, :4].isnan().all() and buffer[:, 8:].isnan().all()
    torch.library.opcheck(_mixed_sum_into, ([x.detach() for x in xs], w.detach(), [True, False, True], rm, rv,
                                            training, 1e-5, out))
