"""Backends check themselves on first use (stacnas.fused.verify): every backend that runs here passes; a
deliberately broken one is reported once, naming op and backend, and its op falls back to the next backend, whose
result the caller then gets; `stacnas info --verify` prints the table and fails on a broken backend."""
import math

import pytest
import torch

from stacnas import fused, info
from stacnas.cli import main
from stacnas.fused import compiled_backend, registry, verify

CPU = torch.device("cpu")
needs_cpp = pytest.mark.skipif(registry.unavailable("cpp", CPU) is not None,
                               reason=f"the C++ backend is not here: {registry.unavailable('cpp', CPU)}")


@pytest.fixture(autouse=True)
def fresh_checks(monkeypatch):
    """Each test sees backends that have not been checked in this process yet."""
    monkeypatch.setattr(registry, "_VERIFIED", {})


def test_every_backend_here_passes_its_self_check_on_every_op_it_implements():
    records = info.verify()
    checked = {r["backend"] for r in records}
    assert checked == {b for b in ("cpp", "cuda", "triton") if registry.unavailable(b, registry.home_device(b)) is None}
    for backend in checked:
        ops = {r["op"] for r in records if r["backend"] == backend}
        assert ops == {op for op, backends in registry.OPS.items() if backend in backends}
    failed = [(r["backend"], r["op"], r["error"], r["raised"]) for r in records if not r["ok"]]
    assert not failed
    assert all(r["error"] < verify.TOLERANCE for r in records)


def test_relative_error_catches_nan_and_shape_changes():
    a = torch.ones(3)
    assert verify.relative_error([a], [a]) == 0.0
    assert verify.relative_error([a * 1.01], [a]) == pytest.approx(0.01)
    assert math.isinf(verify.relative_error([torch.full((3,), float("nan"))], [a]))
    assert math.isinf(verify.relative_error([torch.ones(4)], [a]))
    assert math.isinf(verify.relative_error([a], [a, a]))


def _inputs():
    gen = torch.Generator().manual_seed(0)
    x = [(torch.randn(2, 3, 5, 4, generator=gen) * (k + 1)).requires_grad_() for k in range(3)]
    w = torch.softmax(torch.randn(3, generator=gen), 0).requires_grad_()
    return x, w, torch.randn(2, 3, 5, 4, generator=gen)


def _gradients(backend):
    x, w, grad = _inputs()
    y = fused.mixed_sum(x, w, [True, False, True], backend=backend)[0]
    y.backward(grad)
    return y.detach(), [t.grad for t in x] + [w.grad]


@needs_cpp
@pytest.mark.parametrize("breakage", ["miscomputes", "raises"])
def test_a_broken_backend_is_reported_once_and_its_op_falls_back(breakage, monkeypatch, capsys):
    real = compiled_backend.mixed_sum_backward

    def broken(grad, x, w, *rest):
        if breakage == "raises":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        grad_x, grad_w = real(grad, x, w, *rest)
        return [g * 1.01 for g in grad_x], grad_w

    monkeypatch.setattr(compiled_backend, "mixed_sum_backward", broken)
    y, grads = _gradients("cpp")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'cpp'" in err[0] and "mixed_sum_backward" in err[0], err
    assert ("raised RuntimeError: CUDA error" if breakage == "raises" else "differs from PyTorch's") in err[0]
    assert registry.provider("mixed_sum_backward", "cpp", CPU) == "torch"
    assert registry.provider("mixed_sum_into", "cpp", CPU) == "cpp"  # the ops that passed stay on cpp
    y_ref, grads_ref = _gradients("torch")
    torch.testing.assert_close(y, y_ref)
    for got, expected in zip(grads, grads_ref):
        torch.testing.assert_close(got, expected)
    _gradients("cpp")
    assert capsys.readouterr().err == ""  # once per process


@needs_cpp
def test_info_verify_prints_every_check_and_fails_on_a_broken_backend(monkeypatch, capsys):
    assert main(["info", "--verify"]) == 0
    table = capsys.readouterr().out
    for op, backends in registry.OPS.items():
        if "cpp" in backends:
            assert any(line.split()[:1] == ["cpp"] and op in line and "ok" in line for line in table.splitlines())
    monkeypatch.setattr(registry, "_VERIFIED", {})
    monkeypatch.setattr(compiled_backend, "batch_norm_stats",  # a mean off by one
                        lambda x: (x.mean((0, 2, 3)) + 1, x.var((0, 2, 3), correction=0)))
    assert main(["info", "--verify"]) == 1
    captured = capsys.readouterr()
    failed = [line for line in captured.out.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and "batch_norm_stats" in failed[0] and failed[0].split()[0] == "cpp"
    assert "batch_norm_stats" in captured.err
