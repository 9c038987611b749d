"""The memory-lean ways to run a supernet node; both compute exactly what the reference `MixedOp`s compute.

`lean` (default): every (edge, op) term of a node is summed by one fused `mixed_sum` call, and
  - ops ending in BatchNorm(affine=False) hand over the BN's input z and batch statistics: the BN is folded into
    the sum, so its output o = (z - mean)·rstd is never stored (dL/dw = <g, o> comes from z and the statistics);
  - `none` is skipped (its output is 0, so it adds nothing and its weight gets no gradient from the sum);
  - ReLU(h) is computed once per state and shared by every conv candidate of every edge leaving it; the convs keep
    h, not ReLU(h), and recompute the ReLU in backward (likewise BN+ReLU inside sep_conv keeps only the BN input);
  - max-pool keeps no indices: backward finds them again from the pool's input, which is kept anyway.
`recompute`: a node keeps only its input states and weights; backward recomputes each candidate, one at a time,
  with the BN running statistics frozen (they were updated once, in forward) and the RNG of `noise` replayed.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import fused
from .ops import FactorizedReduce, Identity, Noise, Zero


def _per_channel(t, like):
    return t.view(1, -1, *([1] * (like.dim() - 2)))


class NormReLUConv(torch.autograd.Function):
    """conv(ReLU(x)), or conv(ReLU(BN(x))) with BN statistics (mean, var), keeping x, not the activation, for
    backward; with batch statistics (training) the gradient flows through them as BatchNorm's does.

    `act` may hand in the activation already computed (shared by several convs); it is not kept either.
    """

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation, groups, act, mean, var, training, eps):
        if act is None:
            act = _activation(x, mean, var, eps)
        ctx.save_for_backward(x, weight, mean, var)
        ctx.conv, ctx.training, ctx.eps = (stride, padding, dilation, groups), training, eps
        return F.conv2d(act, weight, None, stride, padding, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, mean, var = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        act = _activation(x, mean, var, ctx.eps)
        grad_act, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad, act, weight, None, _pair(stride), _pair(padding), _pair(dilation), False, [0, 0], groups,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.threshold_backward(grad_act, act, 0) if mean is None else \
                fused.batch_norm_relu_backward(grad_act, x, mean, var, ctx.training, ctx.eps)
        return grad_x, grad_weight, None, None, None, None, None, None, None, None, None


def _activation(x, mean, var, eps):
    if mean is None:
        return F.relu(x)
    rstd = torch.rsqrt(var + eps)
    return F.relu(torch.addcmul(_per_channel(-mean * rstd, x), x, _per_channel(rstd, x)))


def _pair(v):
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def _window3(x: torch.Tensor, combine, pad_value: float) -> torch.Tensor:
    """combine over each 3×3 window (padding 1, stride 1), as two 3-wide passes: rows, then columns."""
    p = F.pad(x, (1, 1, 1, 1), value=pad_value)
    rows = combine(combine(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    return combine(combine(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def _strided(y: torch.Tensor, stride: int) -> torch.Tensor:
    # padding 1, kernel 3: the stride-s output is every s-th stride-1 output
    return y if stride == 1 else y[..., ::stride, ::stride].contiguous()


def max_pool3x3(x: torch.Tensor, stride: int) -> torch.Tensor:
    """F.max_pool2d(x, 3, stride, 1), exactly (a max is a max in any order), without autograd. PyTorch's CPU
    max-pool on NCHW costs ~25× more than these two elementwise passes (3.9 vs 0.16 ms at 16×16×32×32)."""
    return _strided(_window3(x, torch.maximum, float("-inf")), stride)


def avg_pool3x3(x: torch.Tensor, stride: int) -> torch.Tensor:
    """F.avg_pool2d(x, 3, stride, 1, count_include_pad=False) as two 3-wide sums divided by each window's count
    of real pixels (differentiable; the sums are associated differently from PyTorch's, so equal to rounding)."""
    h, w = x.shape[-2:]
    ones = x.new_ones(1, 1, h, w)
    count = _window3(ones, torch.add, 0.0)
    return _strided(_window3(x, torch.add, 0.0) / count, stride)


class MaxPoolNoIndices(torch.autograd.Function):
    """3×3 max-pool that keeps no int64 indices: backward finds each argmax by comparing input and output, both of
    which are kept anyway (the input is a node state, the output the folded BN's input)."""

    @staticmethod
    def forward(ctx, x, stride):
        out = max_pool3x3(x, stride)
        ctx.save_for_backward(x, out)
        ctx.stride = stride
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        s = ctx.stride
        return fused.max_pool2d_backward_from_output(grad, x, out, [3, 3], [s, s], [1, 1]), None


def batch_stats(bn: nn.BatchNorm2d, z: torch.Tensor):
    """(mean, var, training): the statistics `bn` would normalize z with, and whether they are z's batch statistics
    (then z's gradient flows through them). Updates the running statistics as `bn` would (once)."""
    if bn.training or not bn.track_running_stats:
        mean, var = fused.batch_norm_stats(z)
        if bn.training and bn.track_running_stats:
            _update_running_stats([bn], mean[None], var[None], z.numel() // z.shape[1])
        return mean, var, True
    return bn.running_mean, bn.running_var, False


def _conv(conv: nn.Conv2d, x, act=None, bn=None):
    """conv(ReLU(x)), or conv(ReLU(bn(x))) when the BatchNorm(affine=False) `bn` comes first."""
    mean = var = None
    training, eps = False, 0.0
    if bn is not None:
        mean, var, training = batch_stats(bn, x)
        eps = bn.eps
    return NormReLUConv.apply(x, conv.weight, conv.stride, conv.padding, conv.dilation, conv.groups, act, mean, var,
                              training, eps)


def is_none_op(op: nn.Module) -> bool:
    """`none`: stacnas' Zero or DARTS' (recognized by name: it has no parameters and returns zeros)."""
    return isinstance(op, Zero) or (type(op).__name__ == "Zero" and not any(True for _ in op.parameters()))


def _layers(op: nn.Module):
    """The layer list of an op built like DARTS' (layers in `op.op`, or the op itself a Sequential), else None."""
    inner = getattr(op, "op", None)
    if isinstance(inner, nn.Sequential):
        return list(inner)
    return list(op) if isinstance(op, nn.Sequential) else None


def _foldable(bn) -> bool:
    return isinstance(bn, nn.BatchNorm2d) and not bn.affine


def _conv_chain(layers) -> bool:
    """ReLU, conv, (conv | BN ReLU conv)*, BN(affine=False): nor_conv, dil_conv and sep_conv."""
    if len(layers) < 3 or not isinstance(layers[0], nn.ReLU) or not isinstance(layers[1], nn.Conv2d) \
            or not _foldable(layers[-1]):
        return False
    i = 2
    while i < len(layers) - 1:
        if isinstance(layers[i], nn.Conv2d) and layers[i].bias is None:
            i += 1
        elif (i + 2 < len(layers) - 1 and isinstance(layers[i], nn.BatchNorm2d) and not layers[i].affine
              and isinstance(layers[i + 1], nn.ReLU) and isinstance(layers[i + 2], nn.Conv2d)):
            i += 3
        else:
            return False
    return layers[1].bias is None


def fast_pool(pool: nn.Module):
    """The fast equivalent of a DARTS 3×3 pool (padding 1, square stride), or None for any other pool."""
    stride = _pair(getattr(pool, "stride", None))
    if _pair(getattr(pool, "kernel_size", None)) != [3, 3] or _pair(pool.padding) != [1, 1] \
            or stride[0] != stride[1] or pool.ceil_mode:
        return None
    if isinstance(pool, nn.MaxPool2d) and _pair(pool.dilation) == [1, 1] and not pool.return_indices:
        return lambda h: MaxPoolNoIndices.apply(h, stride[0])
    if isinstance(pool, nn.AvgPool2d) and not pool.count_include_pad and pool.divisor_override is None:
        return lambda h: avg_pool3x3(h, stride[0])
    return None


def fast_forward(op: nn.Module):
    """op's forward, with a DARTS pool op ([3×3 pool, BN]) on the fast pools; other ops as they are."""
    layers = _layers(op)
    if layers is not None and len(layers) == 2 and isinstance(layers[0], (nn.AvgPool2d, nn.MaxPool2d)):
        pool = fast_pool(layers[0])
        if pool is not None:
            bn = layers[1]
            return lambda h: bn(pool(h))
    return op


def lean_term(op: nn.Module, h: torch.Tensor, relu_h):
    """One candidate on state h, as (x, bn): x is the input z of a trailing BN(affine=False) to fold (bn given), or
    the op's output (bn None). Ops are recognized by structure (stacnas' and DARTS' own classes alike); anything
    else simply runs as it is. relu_h() gives the shared ReLU(h)."""
    if isinstance(op, (Identity, nn.Identity)) or (type(op).__name__ == "Identity" and not list(op.parameters())):
        return h, None
    if isinstance(op, FactorizedReduce) or (hasattr(op, "conv_1") and hasattr(op, "conv_2") and _foldable(
            getattr(op, "bn", None)) and type(op).__name__ == "FactorizedReduce"):
        if not _foldable(op.bn):
            return op(h), None
        shifted = h[:, :, 1:, 1:]
        if odd := (h.shape[2] % 2 or h.shape[3] % 2):
            if not isinstance(op, FactorizedReduce):  # DARTS' own FactorizedReduce does not pad odd sizes
                return op(h), None
            shifted = F.pad(shifted, (0, h.shape[3] % 2, 0, h.shape[2] % 2))
        z = torch.cat([_conv(op.conv_1, h, act=relu_h()),
                       _conv(op.conv_2, shifted, act=None if odd else relu_h()[:, :, 1:, 1:])], dim=1)
        return z, op.bn
    layers = _layers(op)
    if layers is None:
        return op(h), None
    if len(layers) == 2 and _foldable(layers[1]) and isinstance(layers[0], (nn.AvgPool2d, nn.MaxPool2d)):
        return (fast_pool(layers[0]) or layers[0])(h), layers[1]
    if not _conv_chain(layers):
        return op(h), None
    x = _conv(layers[1], h, act=relu_h())
    i = 2
    while i < len(layers) - 1:
        if isinstance(layers[i], nn.BatchNorm2d):  # BN → ReLU → conv inside sep_conv
            x = _conv(layers[i + 2], x, bn=layers[i])
            i += 3
        else:
            x = layers[i](x)
            i += 1
    return x, layers[-1]


def lean_node(edges, states, weights, backend=None):
    """One node: sum over its incoming edges (edges[j] reads states[j]) of sum_k weights[j, k] · op_jk(states[j])."""
    relu_cache = {}
    xs, bns, w_index = [], [], []
    for j, (edge, h) in enumerate(zip(edges, states)):
        def relu_h(h=h, j=j):
            if j not in relu_cache:
                relu_cache[j] = F.relu(h.detach())
            return relu_cache[j]
        for k, op in enumerate(edge._ops):
            if is_none_op(op):
                continue
            x, bn = lean_term(op, h, relu_h)
            xs.append(x)
            bns.append(bn)
            w_index.append((j, k))
    rows, cols = zip(*w_index)
    normalize = [bn is not None for bn in bns]
    training = any(bn.training or not bn.track_running_stats for bn in bns if bn is not None)
    eps = next((bn.eps for bn in bns if bn is not None), 1e-5)
    running_mean = running_var = None
    if not training and any(normalize):
        C = xs[0].shape[1]
        running_mean = torch.stack([bn.running_mean if bn is not None else xs[0].new_zeros(C) for bn in bns])
        running_var = torch.stack([bn.running_var if bn is not None else xs[0].new_ones(C) for bn in bns])
    y, mean, var = fused.mixed_sum(xs, weights[list(rows), list(cols)], normalize, running_mean, running_var,
                                   training, eps, backend=backend)
    if training:
        updated = [k for k, bn in enumerate(bns) if bn is not None and bn.training and bn.track_running_stats]
        _update_running_stats([bns[k] for k in updated], mean[updated], var[updated], xs[0].numel() // xs[0].shape[1])
    return y


def _update_running_stats(bns, means, variances, n):
    """What each BatchNorm's forward does to its running statistics, for many BNs at once (foreach ops)."""
    if not bns:
        return
    with torch.no_grad():
        torch._foreach_add_([bn.num_batches_tracked for bn in bns], 1)
        factors = [bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked) for bn in bns]
        unbiased = variances * (n / max(n - 1, 1))
        for stats, batch in ((("running_mean", means)), ("running_var", unbiased)):
            running = [getattr(bn, stats) for bn in bns]
            if len(set(factors)) == 1:
                torch._foreach_mul_(running, 1 - factors[0])
                torch._foreach_add_(running, list(batch.unbind(0)), alpha=factors[0])
            else:
                for r, b, f in zip(running, batch.unbind(0), factors):
                    r.mul_(1 - f).add_(b, alpha=f)


# ---- recompute ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def frozen_running_stats(module: nn.Module):
    """Run module without changing any BN running statistics (they were updated once already)."""
    saved = [(bn, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
             for bn in module.modules() if isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats]
    try:
        yield
    finally:
        with torch.no_grad():
            for bn, mean, var, count in saved:
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(count)


def _uses_rng(op: nn.Module) -> bool:
    """Ops whose output is random (`noise`: stacnas' Noise, RobustDARTS' NoiseOp): their RNG is replayed."""
    return isinstance(op, Noise) or type(op).__name__ in ("Noise", "NoiseOp")


def _rng_state(device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


@contextlib.contextmanager
def _replayed_rng(device, state):
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        if device.type == "cuda":
            torch.cuda.set_rng_state(state, device)
        else:
            torch.set_rng_state(state)
        yield


class RecomputeNode(torch.autograd.Function):
    """y = sum over terms t of w_t · op_t(states[s_t]); keeps only the states and w."""

    @staticmethod
    def forward(ctx, terms, n_states, w, *tensors):
        states, params = tensors[:n_states], tensors[n_states:]
        y, rng = None, {}
        for t, (s, op, _) in enumerate(terms):
            if _uses_rng(op):
                rng[t] = _rng_state(states[s].device)
            o = fast_forward(op)(states[s])
            y = w[t] * o if y is None else y.addcmul_(o, w[t])
        ctx.terms, ctx.n_states, ctx.n_params, ctx.rng = terms, n_states, len(params), rng
        ctx.save_for_backward(w, *states)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        w, *states = ctx.saved_tensors
        leaves = [s.detach().requires_grad_(s.requires_grad) for s in states]
        grad_states = [None] * len(states)
        grad_params, grad_w = [], torch.zeros_like(w)
        for t, (s, op, params) in enumerate(ctx.terms):
            replay = _replayed_rng(leaves[s].device, ctx.rng[t]) if t in ctx.rng else contextlib.nullcontext()
            wanted = ([leaves[s]] if leaves[s].requires_grad else []) + [p for p in params if p.requires_grad]
            # the running statistics are restored only after backward: BN's backward checks they are unchanged
            with frozen_running_stats(op):
                with torch.enable_grad(), replay:
                    o = fast_forward(op)(leaves[s])
                grad_w[t] = (grad * o.detach()).sum()
                found = iter(torch.autograd.grad(o, wanted, grad * w[t], allow_unused=True)
                             if o.requires_grad and wanted else [None] * len(wanted))
            if leaves[s].requires_grad:
                g_state = next(found)
                if g_state is not None:
                    grad_states[s] = g_state if grad_states[s] is None else grad_states[s] + g_state
            grad_params.extend(next(found) if p.requires_grad else None for p in params)
        return (None, None, grad_w, *grad_states, *grad_params)


def recompute_node(edges, states, weights):
    terms, w_index, params = [], [], []
    for j, edge in enumerate(edges):
        for k, op in enumerate(edge._ops):
            if is_none_op(op):
                continue
            op_params = list(op.parameters())
            terms.append((j, op, op_params))
            w_index.append((j, k))
            params.extend(op_params)
    rows, cols = zip(*w_index)
    w = weights[list(rows), list(cols)]
    return RecomputeNode.apply(terms, len(states), w, *states, *params)
