"""Triton kernels of the fused mixed sum and their launchers (the C++/CUDA twins are in csrc/).

    y = sum_k w_k * o_k,   o_k = (x_k - mean_k) * rstd_k  (normalized terms)  or  x_k

Three kernels: per-channel sums (batch statistics, and S = sum g, T_k = sum g x_k for backward) on a
(channels, slices) grid finished by torch.sum (deterministic, no atomics); the forward sum over up to four inputs
per launch, accumulating into y; and dx_k = A g + P x_k + Q per input. The accumulator dtype is a constexpr
(float64 for float64 inputs, so gradcheck holds).

The launchers `mixed_sum_into` and `mixed_sum_backward` take plain tensors; stacnas.fused.triton_backend registers
them as custom ops, and stacnas.fused gives them autograd. This module imports nothing of stacnas.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 256
SLICES_MAX = 64
PER_LAUNCH = 4


@triton.jit
def _channel_sums_kernel(a_ptr, b_ptr, out_ptr, C, N, INNER, SLICES, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """out[0, c, s] = partial sum of a over channel c; out[1, c, s] = partial sum of a * b."""
    c = tl.program_id(0)
    s = tl.program_id(1)
    total = N * INNER
    acc_a = tl.zeros([BLOCK], dtype=ACC)
    acc_ab = tl.zeros([BLOCK], dtype=ACC)
    for start in range(s * BLOCK, total, SLICES * BLOCK):
        j = start + tl.arange(0, BLOCK)
        mask = j < total
        idx = (j // INNER) * C * INNER + c * INNER + j % INNER
        a = tl.load(a_ptr + idx, mask=mask, other=0).to(ACC)
        b = tl.load(b_ptr + idx, mask=mask, other=0).to(ACC)
        acc_a += a
        acc_ab += a * b
    tl.store(out_ptr + c * SLICES + s, tl.sum(acc_a, axis=0))
    tl.store(out_ptr + (C + c) * SLICES + s, tl.sum(acc_ab, axis=0))


@triton.jit
def _sum_kernel(y_ptr, x0, x1, x2, x3, a_ptr, m_ptr, C, INNER, Y_STRIDE, n, NUM: tl.constexpr,
                ACCUMULATE: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """y = sum of a_kc (x_k - m_kc) over the NUM (<= 4) inputs given (centred, as BatchNorm is defined: a_k x_k + b
    would lose the digits b cancels where a mean is large); with ACCUMULATE, y += the sum instead. Samples of y lie
    Y_STRIDE elements apart (a channel slice of a cell's output)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    c = (i // INNER) % C
    out = (i // (C * INNER)) * Y_STRIDE + i % (C * INNER)
    if ACCUMULATE:
        acc = tl.load(y_ptr + out, mask=mask, other=0).to(ACC)
    else:
        acc = tl.zeros([BLOCK], dtype=ACC)
    acc += tl.load(a_ptr + c, mask=mask, other=0).to(ACC) * (
        tl.load(x0 + i, mask=mask, other=0).to(ACC) - tl.load(m_ptr + c, mask=mask, other=0).to(ACC))
    if NUM > 1:
        acc += tl.load(a_ptr + C + c, mask=mask, other=0).to(ACC) * (
            tl.load(x1 + i, mask=mask, other=0).to(ACC) - tl.load(m_ptr + C + c, mask=mask, other=0).to(ACC))
    if NUM > 2:
        acc += tl.load(a_ptr + 2 * C + c, mask=mask, other=0).to(ACC) * (
            tl.load(x2 + i, mask=mask, other=0).to(ACC) - tl.load(m_ptr + 2 * C + c, mask=mask, other=0).to(ACC))
    if NUM > 3:
        acc += tl.load(a_ptr + 3 * C + c, mask=mask, other=0).to(ACC) * (
            tl.load(x3 + i, mask=mask, other=0).to(ACC) - tl.load(m_ptr + 3 * C + c, mask=mask, other=0).to(ACC))
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_kernel(dx_ptr, g_ptr, x_ptr, coef_ptr, C, INNER, n, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """dx = A_c g + P_c x + Q_c, coef = (A, P, Q) each of C entries."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    c = (i // INNER) % C
    A = tl.load(coef_ptr + c, mask=mask, other=0).to(ACC)
    P = tl.load(coef_ptr + C + c, mask=mask, other=0).to(ACC)
    Q = tl.load(coef_ptr + 2 * C + c, mask=mask, other=0).to(ACC)
    g = tl.load(g_ptr + i, mask=mask, other=0).to(ACC)
    x = tl.load(x_ptr + i, mask=mask, other=0).to(ACC)
    tl.store(dx_ptr + i, (A * g + P * x + Q).to(dx_ptr.dtype.element_ty), mask=mask)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _layout(x: torch.Tensor):
    N = x.shape[0] if x.dim() >= 1 else 1
    C = x.shape[1] if x.dim() >= 2 else 1
    return N, C, x.numel() // max(N * C, 1)


def _channel_sums(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(sum a, sum a*b) per channel, float64 (2, C)."""
    N, C, inner = _layout(a)
    slices = max(1, min(SLICES_MAX, triton.cdiv(N * inner, BLOCK * 4)))
    acc_dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    partial = torch.empty(2, C, slices, dtype=acc_dtype, device=a.device)
    if N * inner == 0:
        return torch.zeros(2, C, dtype=torch.float64, device=a.device)
    _channel_sums_kernel[(C, slices)](a, b, partial, C, N, inner, slices, BLOCK=BLOCK, ACC=_acc(a.dtype))
    return partial.double().sum(2)


def _sample_stride(out: torch.Tensor) -> int:
    """The distance between samples of out, whose per-sample (C, ...) blocks are contiguous (the caller checked)."""
    N, C, inner = _layout(out)
    return C * inner if out.is_contiguous() else out.stride(0)


def mixed_sum_into(x, w, normalize, running_mean, running_var, training, eps, y):
    """Writes the sum into y (shaped like x[0]; each sample's (C, ...) block contiguous); returns (mean, var).
    The arguments are checked by the caller (stacnas.fused.checks)."""
    y_stride = _sample_stride(y)
    x = [t.contiguous() for t in x]
    N, C, inner = _layout(x[0])
    K = len(x)
    mean = torch.zeros(K, C, dtype=torch.float64, device=x[0].device)
    var = torch.ones(K, C, dtype=torch.float64, device=x[0].device)
    for k in (k for k in range(K) if normalize[k]):
        if training:
            sums = _channel_sums(x[k], x[k])
            count = max(N * inner, 1)
            mean[k] = sums[0] / count
            var[k] = (sums[1] / count - mean[k] ** 2).clamp_min(0)
        else:
            mean[k], var[k] = running_mean[k], running_var[k]
    rstd = _rstd(var, normalize, eps)
    a = w.double().view(K, 1) * rstd
    acc_dtype = torch.float64 if x[0].dtype == torch.float64 else torch.float32
    a, m = a.to(acc_dtype).contiguous(), mean.to(acc_dtype).contiguous()
    n = y.numel()
    for k0 in range(0, K, PER_LAUNCH):
        chunk = x[k0:k0 + PER_LAUNCH]
        ptrs = chunk + [chunk[0]] * (PER_LAUNCH - len(chunk))
        _sum_kernel[(triton.cdiv(n, BLOCK),)](y, *ptrs, a[k0:], m[k0:], C, inner, y_stride, n, NUM=len(chunk),
                                              ACCUMULATE=k0 > 0, BLOCK=BLOCK, ACC=_acc(x[0].dtype))
    return mean.to(w.dtype), var.to(w.dtype)


def _rstd(var, normalize, eps):
    rstd = (var.double() + eps).rsqrt()
    rstd[[not n for n in normalize]] = 1.0
    return rstd


def mixed_sum_backward(grad, x, w, normalize, mean, var, training, eps):
    """(grad_x, grad_w) of mixed_sum given the statistics its forward returned."""
    x = [t.contiguous() for t in x]
    grad = grad.contiguous()
    N, C, inner = _layout(grad)
    K, n = len(x), max(N * inner, 1)
    sums = [_channel_sums(grad, xk) for xk in x]
    S = sums[0][0]
    T = torch.stack([s[1] for s in sums])
    mean, rstd = mean.double(), _rstd(var, normalize, eps)
    centered = T - mean * S
    A = w.double().view(K, 1) * rstd
    P, Q = torch.zeros_like(A), torch.zeros_like(A)
    if training:  # dx = A (g - S/n - xhat * sum(g xhat)/n) for normalized terms
        rows = torch.tensor(normalize, device=A.device)
        p = -A * rstd * (rstd * centered) / n
        q = -A * S / n - p * mean
        P[rows], Q[rows] = p[rows], q[rows]
    acc_dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    grad_x = []
    for k in range(K):
        coef = torch.stack([A[k], P[k], Q[k]]).to(acc_dtype).contiguous()
        dx = torch.empty_like(grad)
        _grad_kernel[(triton.cdiv(grad.numel(), BLOCK),)](dx, grad, x[k], coef, C, inner, grad.numel(), BLOCK=BLOCK,
                                                          ACC=_acc(grad.dtype))
        grad_x.append(dx)
    return grad_x, (rstd * centered).sum(1).to(w.dtype)
