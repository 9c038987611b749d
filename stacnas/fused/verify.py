"""Backends check themselves. The first time a backend other than `torch` computes an op on a device, every op it
implements runs once on small fixed inputs (odd shapes, both BN modes, strides and dilations) and is compared with
the `torch` backend: forward ops and backward ops alike, since they are separate kernels. An op that differs, or
raises, is reported once (a warning naming op and backend) and the registry hands it to the next backend. This
guards kernels that have never run on a kind of device (CUDA, compiled Triton) from silently computing wrong
gradients; on the CPU the checks cost milliseconds, once per process. `stacnas info --verify` runs them all."""
from __future__ import annotations

import math
import time

import torch

from . import torch_backend

# float32 kernels against PyTorch's: different summation orders differ by ~1e-6 relative; a real bug by far more
TOLERANCE = 1e-4


def _inputs(op: str, device: torch.device) -> list[tuple]:
    """The fixed cases of `op`: argument tuples, built from a seeded CPU generator and moved to `device`."""
    gen = torch.Generator().manual_seed(20261129)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    def mixed(training):
        x = [randn(2, 5, 3, 4) * (1 + k) + k for k in range(3)]
        w = torch.softmax(randn(3), 0)
        running_mean, running_var = randn(3, 5) * 0.1, randn(3, 5).abs() + 0.5
        return x, w, [True, False, True], running_mean, running_var, training

    if op == "mixed_sum_into":
        return [(*mixed(training), 1e-5, torch.empty(2, 5, 3, 4, device=device)) for training in (True, False)]
    if op == "mixed_sum_backward":
        cases = []
        for training in (True, False):
            x, w, normalize, running_mean, running_var, _ = mixed(training)
            _, mean, var = torch_backend.reference_mixed_sum(x, w, normalize, running_mean, running_var, training)
            cases.append((randn(2, 5, 3, 4), x, w, normalize, mean, var, training, 1e-5))
        return cases
    if op == "batch_norm_stats":
        return [(randn(3, 5, 4, 3) * 3 + 2,)]
    if op == "batch_norm_relu_backward":
        x = randn(3, 5, 4, 3) + 0.3
        var, mean = torch.var_mean(x, dim=[0, 2, 3], correction=0)
        return [(randn(3, 5, 4, 3), x, mean, var, training, 1e-5) for training in (True, False)]
    if op == "max_pool2d_backward_from_output":
        x = randn(2, 3, 7, 5)
        y = torch.nn.functional.max_pool2d(x, 3, 2, 1)
        return [(randn(*y.shape), x, y, [3, 3], [2, 2], [1, 1])]
    if op == "depthwise_conv2d_weight_grad":
        cases = []
        for kernel, stride, padding, dilation in ((3, 1, 1, 1), (5, 2, 4, 2)):
            x = randn(2, 4, 9, 7)
            out = torch.nn.functional.conv2d(x, x.new_empty(4, 1, kernel, kernel), None, stride, padding, dilation, 4)
            cases.append((randn(*out.shape), x, [kernel] * 2, [stride] * 2, [padding] * 2, [dilation] * 2))
        return cases
    if op == "conv_chain_backward":
        # every route: depthwise 3×3 (stride 1), pointwise, BN+ReLU then dilated 5×5, pointwise with a bias, 3×3
        # stride 2
        geometry = [1, 1, 1, 1, 1, 1, 4, 1, 1, 0, 0, 1, 1, 1, 1, 1, 4, 4, 2, 2, 4, 1, 1, 0, 0, 1, 1, 1,
                    2, 2, 1, 1, 1, 1, 6]
        weights = [randn(4, 1, 3, 3), randn(4, 4, 1, 1), randn(4, 1, 5, 5), randn(6, 4, 1, 1), randn(6, 1, 3, 3)]
        inputs = [randn(2, 4, 9, 7), randn(2, 4, 9, 7), randn(2, 4, 9, 7) + 0.3, randn(2, 4, 9, 7), randn(2, 6, 9, 7)]
        cases = []
        for training in (True, False):
            var, mean = torch.var_mean(inputs[2], dim=[0, 2, 3], correction=0) if training \
                else (randn(4).abs() + 0.5, randn(4) * 0.1)
            cases.append((randn(2, 6, 5, 4), inputs, weights, geometry, [True, False, True, False, True],
                          [None, None, mean, None, None], [None, None, var, None, None],
                          [False, False, training, False, False], [0.0, 0.0, 1e-5, 0.0, 0.0], True, [True] * 5,
                          [False, False, False, True, False]))
        return cases
    raise KeyError(op)


def _tensors(result) -> list[torch.Tensor]:
    """Every tensor of an op's result (tensors, lists and tuples of them), in order."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (list, tuple)):
        return [t for item in result for t in _tensors(item)]
    return []


def _copy(args: tuple) -> tuple:
    def copy(a):
        return a.clone() if isinstance(a, torch.Tensor) else [copy(t) for t in a] if isinstance(a, list) else a
    return tuple(copy(a) for a in args)


def _run(fn, op: str, args: tuple) -> list[torch.Tensor]:
    """What the op returns, and for mixed_sum_into also what it wrote into `out` (its last argument)."""
    args = _copy(args)
    result = _tensors(fn(*args))
    return result + [args[-1]] if op == "mixed_sum_into" else result


def relative_error(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """The largest error over the outputs, each relative to the largest magnitude of its expected tensor."""
    if len(got) != len(expected):
        return float("inf")
    worst = 0.0
    for a, b in zip(got, expected):
        if a.shape != b.shape:
            return float("inf")
        scale = b.abs().max().item() if b.numel() else 0.0
        error = (a.double() - b.double()).abs().max().item() if b.numel() else 0.0
        if math.isnan(error):  # a NaN where PyTorch has a number (max() would skip it)
            return float("inf")
        worst = max(worst, error / max(scale, 1e-12))
    return worst


def check_op(op: str, fn, device: torch.device) -> tuple[float, str | None]:
    """(the largest relative error over the op's cases, None) or (inf, what it raised)."""
    reference = getattr(torch_backend, op)
    worst = 0.0
    for args in _inputs(op, device):
        try:
            got = _run(fn, op, args)
        except Exception as err:  # a kernel that raises is as wrong as one that miscomputes
            return float("inf"), f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
        worst = max(worst, relative_error(got, _run(reference, op, args)))
    return worst, None


def verify_backend(backend: str, module, ops: list[str], device: torch.device) -> list[dict]:
    """One record per op: op, backend, device, error (relative), ok, raised (or None), seconds."""
    records = []
    for op in ops:
        started = time.perf_counter()
        error, raised = check_op(op, getattr(module, op), device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        records.append({"op": op, "backend": backend, "device": str(device), "error": error,
                        "ok": raised is None and error <= TOLERANCE, "raised": raised,
                        "seconds": round(time.perf_counter() - started, 4)})
    return records
