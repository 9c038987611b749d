"""The memory-lean ways to run a supernet node; both compute exactly what the reference `MixedOp`s compute.

`lean` (default): every (edge, op) term of a node is summed by one fused `mixed_sum` call, and
  - ops ending in BatchNorm(affine=False) hand over the BN's input z and batch statistics: the BN is folded into
    the sum, so its output o = (z - mean)·rstd is never stored (dL/dw = <g, o> comes from z and the statistics);
  - `none` is skipped (its output is 0, so it adds nothing and its weight gets no gradient from the sum);
  - ReLU(h) is computed once per state and shared by every conv candidate of every edge leaving it; the convs keep
    h, not ReLU(h), and recompute the ReLU in backward (likewise BN+ReLU inside sep_conv keeps only the BN input);
  - max-pool keeps no indices: backward finds them again from the pool's input, which is kept anyway;
  - no concat copy: nodes are written into their channel slices of the cell's output (CellOutput);
  - a cell's preprocess keeps the previous cell's output, not ReLU of it;
  - on CPUs the depthwise and pointwise convs take faster backward routes than PyTorch's (conv_backward).
`recompute`: a node keeps only its input states and weights; backward recomputes each candidate, one at a time, the
  way lean computes it, with the BN running statistics frozen (they were updated once, in forward) and the RNG of
  `noise` replayed.
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
        return conv_forward(act, weight, stride, padding, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, mean, var = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        act = _activation(x, mean, var, ctx.eps)
        grad_act, grad_weight = conv_backward(grad, act, weight, stride, padding, dilation, groups,
                                              ctx.needs_input_grad[:2])
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.threshold_backward(grad_act, act, 0) if mean is None else \
                fused.batch_norm_relu_backward(grad_act, x, mean, var, ctx.training, ctx.eps)
        return grad_x, grad_weight, None, None, None, None, None, None, None, None, None


class Conv(torch.autograd.Function):
    """F.conv2d(x, weight) without bias, with the backward of `conv_backward`."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, groups)
        return conv_forward(x, weight, stride, padding, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return (*conv_backward(grad, x, weight, *ctx.conv, ctx.needs_input_grad[:2]), None, None, None, None)


def _pointwise(x, weight, stride, padding, groups) -> bool:
    """A 1×1, stride-1, unpadded, ungrouped conv on a CPU tensor: a matrix product, 1.5–4× faster there than
    PyTorch's conv (whose fixed cost per call is ~0.1 ms)."""
    return (x.device.type == "cpu" and weight.shape[2:] == (1, 1) and groups == 1 and _pair(stride) == [1, 1]
            and _pair(padding) == [0, 0])


def conv_forward(x, weight, stride, padding, dilation, groups):
    """F.conv2d(x, weight, None, stride, padding, dilation, groups); pointwise convs as matrix products on CPUs."""
    if _pointwise(x, weight, stride, padding, groups):
        n, c_out = x.shape[0], weight.shape[0]
        # bmm with the weight expanded (a view): torch.matmul would copy x to fold the batch into one product
        matrix = weight.reshape(1, c_out, -1).expand(n, -1, -1)
        return torch.bmm(matrix, x.reshape(n, x.shape[1], -1)).view(n, c_out, *x.shape[2:])
    return F.conv2d(x, weight, None, stride, padding, dilation, groups)


def conv_backward(grad, x, weight, stride, padding, dilation, groups, needs):
    """(grad_x, grad_weight) of F.conv2d(x, weight, None, stride, padding, dilation, groups), each only where `needs`
    says. PyTorch's CPU backward of the depthwise and pointwise convs in DARTS' ops costs 5–20× their forward, so on
    CPUs these take other routes (equal to rounding): the depthwise filter gradient by a C++ kernel (PyTorch's own is
    fast only for undilated 3×3), the depthwise input gradient at stride 1 as a forward conv of grad with the flipped
    filters, and the pointwise (1×1, stride 1) gradients as matrix products."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    c_out, c_in_group, kh, kw = weight.shape
    if x.device.type == "cpu" and groups == x.shape[1] == c_out and c_in_group == 1:
        grad_x = grad_weight = None
        if needs[0] and stride == [1, 1]:
            flipped = [d * (k - 1) - p for d, k, p in zip(dilation, (kh, kw), padding)]
            if min(flipped) >= 0:
                grad_x = F.conv2d(grad, weight.flip(-2, -1), None, 1, flipped, dilation, groups)
        if needs[1] and not ((kh, kw) == (3, 3) and dilation == [1, 1]):
            grad_weight = fused.depthwise_conv2d_weight_grad(grad, x, [kh, kw], stride, padding, dilation)
        rest = [needs[0] and grad_x is None, needs[1] and grad_weight is None]
        if any(rest):
            found = torch.ops.aten.convolution_backward(grad, x, weight, None, stride, padding, dilation, False,
                                                        [0, 0], groups, rest + [False])
            grad_x = found[0] if rest[0] else grad_x
            grad_weight = found[1] if rest[1] else grad_weight
        return grad_x, grad_weight
    if _pointwise(x, weight, stride, padding, groups):
        n = x.shape[0]
        g = grad.reshape(n, c_out, -1)
        grad_x = torch.bmm(weight.reshape(1, c_out, -1).mT.expand(n, -1, -1), g).view(x.shape) if needs[0] else None
        grad_weight = torch.bmm(g, x.reshape(n, x.shape[1], -1).transpose(1, 2)).sum(0).view(weight.shape) \
            if needs[1] else None
        return grad_x, grad_weight
    found = torch.ops.aten.convolution_backward(grad, x, weight, None, stride, padding, dilation, False, [0, 0],
                                                groups, [needs[0], needs[1], False])
    return found[0], found[1]


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
    """ReLU, conv, (conv | BN ReLU conv)*, BN(affine=False), every conv without bias: nor_conv, dil_conv, sep_conv."""
    if len(layers) < 3 or not isinstance(layers[0], nn.ReLU) or not _plain_conv(layers[1]) \
            or not _foldable(layers[-1]):
        return False
    i = 2
    while i < len(layers) - 1:
        if _plain_conv(layers[i]):
            i += 1
        elif (i + 2 < len(layers) - 1 and isinstance(layers[i], nn.BatchNorm2d) and not layers[i].affine
              and isinstance(layers[i + 1], nn.ReLU) and _plain_conv(layers[i + 2])):
            i += 3
        else:
            return False
    return True


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


def _plain_conv(layer: nn.Module) -> bool:
    return type(layer) is nn.Conv2d and layer.bias is None and layer.padding_mode == "zeros"


def _apply_conv(conv: nn.Conv2d, x):
    return Conv.apply(x, conv.weight, conv.stride, conv.padding, conv.dilation, conv.groups)


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
            x = _apply_conv(layers[i], x)
            i += 1
    return x, layers[-1]


def _shared_relu(states):
    """relu_of(j)() is ReLU(states[j]), computed once however many convs read it."""
    cache = {}

    def relu_of(j):
        def relu():
            if j not in cache:
                cache[j] = F.relu(states[j].detach())
            return cache[j]
        return relu
    return relu_of


def lean_preprocess(op: nn.Module, s: torch.Tensor) -> torch.Tensor:
    """A cell's preprocess op (ReLU-conv-BN or FactorizedReduce) keeping its input s, not ReLU(s): s is the previous
    cell's output, which the two cells reading it then share for backward."""
    x, bn = lean_term(op, s, _shared_relu([s])(0))
    return x if bn is None else bn(x)


class CellOutput:
    """A cell's output cat(node outputs, dim=1) with no concat copy: each node's sum is written straight into its
    channel slice of one buffer, and the buffer is the cell's output.

    Each slice is a tensor of its own set to the buffer's storage, not a view of the buffer: views share one version
    counter, so writing node 3 would invalidate node 2's output, which node 3's ops saved for backward. The price:
    autograd cannot see an in-place change of the cell output made after `gather` (nothing in a supernet makes one).
    """

    def __init__(self, nodes: int):
        self.nodes, self.buffer, self.written = nodes, None, 0

    def slot(self, like: torch.Tensor) -> torch.Tensor:
        """The next node's slice, shaped like `like` (N, C, ...)."""
        if self.buffer is None:
            self.buffer = like.new_empty(like.shape[0], self.nodes * like.shape[1], *like.shape[2:])
        offset = self.written * like[0].numel()
        self.written += 1
        return like.new_empty(0).set_(self.buffer.untyped_storage(), offset, like.shape, self.buffer.stride())

    def gather(self, nodes) -> torch.Tensor:
        if self.written != self.nodes or any(t.untyped_storage().data_ptr() != self.buffer.untyped_storage().data_ptr()
                                             for t in nodes):
            raise RuntimeError("CellOutput.gather: every node's output must have been written into its slot")
        return _Gather.apply(self.buffer, *nodes)


class _Gather(torch.autograd.Function):
    """Hands on the buffer the nodes were written into; backward splits the gradient as cat's does."""

    @staticmethod
    def forward(ctx, buffer, *nodes):
        ctx.sizes = [t.shape[1] for t in nodes]
        return buffer.detach()

    @staticmethod
    def backward(ctx, grad):
        return (None, *grad.split(ctx.sizes, dim=1))


class MixedSumInto(torch.autograd.Function):
    """fused.mixed_sum with y written into `out` (a node's slot of its CellOutput); backward as mixed_sum's."""

    @staticmethod
    def forward(ctx, out, w, normalize, running_mean, running_var, training, eps, backend, *x):
        mean, var = fused.mixed_sum_into(x, w, normalize, running_mean, running_var, training, eps, out, backend)
        ctx.mark_dirty(out)
        ctx.mark_non_differentiable(mean, var)
        ctx.save_for_backward(w, mean, var, *x)
        ctx.normalize, ctx.training, ctx.eps, ctx.backend = normalize, training, eps, backend
        return out, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _grad_mean, _grad_var):
        w, mean, var, *x = ctx.saved_tensors
        grad_x, grad_w = fused.mixed_sum_backward(grad, x, w, ctx.normalize, mean, var, ctx.training, ctx.eps,
                                                  ctx.backend)
        return (None, grad_w, None, None, None, None, None, None, *grad_x)


def _terms(edges):
    """(j, k, op) for every candidate op k of edge j but `none` (its output is 0: it adds nothing to the sum)."""
    return [(j, k, op) for j, edge in enumerate(edges) for k, op in enumerate(edge._ops) if not is_none_op(op)]


def lean_node(edges, states, weights, backend=None, out: CellOutput | None = None):
    """One node: sum over its incoming edges (edges[j] reads states[j]) of sum_k weights[j, k] · op_jk(states[j]),
    written into the next slot of `out` when given."""
    relu_of = _shared_relu(states)
    terms = _terms(edges)
    xs, bns = [], []
    for j, _, op in terms:
        x, bn = lean_term(op, states[j], relu_of(j))
        xs.append(x)
        bns.append(bn)
    normalize = [bn is not None for bn in bns]
    training = any(bn.training or not bn.track_running_stats for bn in bns if bn is not None)
    eps = next((bn.eps for bn in bns if bn is not None), 1e-5)
    running_mean = running_var = None
    if not training and any(normalize):
        C = xs[0].shape[1]
        running_mean = torch.stack([bn.running_mean if bn is not None else xs[0].new_zeros(C) for bn in bns])
        running_var = torch.stack([bn.running_var if bn is not None else xs[0].new_ones(C) for bn in bns])
    w = weights[[j for j, _, _ in terms], [k for _, k, _ in terms]]
    if out is None:
        y, mean, var = fused.mixed_sum(xs, w, normalize, running_mean, running_var, training, eps, backend=backend)
    else:
        y, mean, var = MixedSumInto.apply(out.slot(xs[0]), w, normalize, running_mean, running_var, training, eps,
                                          fused.resolve_backend(backend, xs[0].device), *xs)
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
    """Run module without changing any BN running statistics (they were updated once already): its training-mode BNs
    stop tracking for the while, so they normalize with the batch statistics as before and update nothing."""
    bns = [bn for bn in module.modules()
           if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.training and bn.track_running_stats]
    for bn in bns:
        bn.track_running_stats = False
    try:
        yield
    finally:
        for bn in bns:
            bn.track_running_stats = True


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
    """y = sum over terms t of w_t · op_t(states[s_t]), written into the next slot of `out` (a CellOutput) when
    given; keeps only the states and w."""

    @staticmethod
    def forward(ctx, out, backend, terms, n_states, w, *tensors):
        states = tensors[:n_states]  # the rest are the ops' parameters: inputs, so that they get gradients
        relu_of = _shared_relu(states)
        y, rng = None, {}
        for t, (s, op, _) in enumerate(terms):
            if _uses_rng(op):
                rng[t] = _rng_state(states[s].device)
            x, bn = lean_term(op, states[s], relu_of(s))
            o = x if bn is None else bn(x)  # transient: one term at a time; bn updates its statistics once
            if y is None:
                y = torch.mul(o, w[t], out=out.slot(o) if out is not None else torch.empty_like(o))
            else:
                y.addcmul_(o, w[t])
        ctx.terms, ctx.rng, ctx.backend = terms, rng, backend
        ctx.save_for_backward(w, *states)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        w, *states = ctx.saved_tensors
        leaves = [s.detach().requires_grad_(s.requires_grad) for s in states]
        relu_of = _shared_relu(states)
        grad_states = [None] * len(states)
        grad_params, grad_w = [], torch.zeros_like(w)
        for t, (s, op, params) in enumerate(ctx.terms):
            replay = _replayed_rng(leaves[s].device, ctx.rng[t]) if t in ctx.rng else contextlib.nullcontext()
            with frozen_running_stats(op), torch.enable_grad(), replay:
                x, bn = lean_term(op, leaves[s], relu_of(s))
            grad_x, grad_w[t] = _term_backward(grad, x.detach(), bn, w[t:t + 1], ctx.backend)
            wanted = ([leaves[s]] if leaves[s].requires_grad else []) + [p for p in params if p.requires_grad]
            found = iter(torch.autograd.grad(x, wanted, grad_x, allow_unused=True) if x.requires_grad and wanted
                         else [None] * len(wanted))
            if leaves[s].requires_grad:
                g_state = next(found)
                if g_state is not None:
                    grad_states[s] = g_state if grad_states[s] is None else grad_states[s] + g_state
            grad_params.extend(next(found) if p.requires_grad else None for p in params)
        return (None, None, None, None, grad_w, *grad_states, *grad_params)


def _term_backward(grad, x, bn, w_t, backend):
    """(dL/dx, dL/dw_t) for the term w_t · x, or w_t · bn(x) with the BN folded: one fused backward pass from x and
    the BN's statistics, the BN's output never formed."""
    if bn is None:
        return grad * w_t, (grad * x).sum()
    if bn.training or not bn.track_running_stats:
        mean, var = fused.batch_norm_stats(x)
        training = True
    else:
        mean, var, training = bn.running_mean, bn.running_var, False
    (grad_x,), grad_w = fused.mixed_sum_backward(grad, [x], w_t, [True], mean[None], var[None], training, bn.eps,
                                                 backend)
    return grad_x, grad_w[0]


def recompute_node(edges, states, weights, backend=None, out: CellOutput | None = None):
    found = _terms(edges)
    terms = [(j, op, list(op.parameters())) for j, _, op in found]
    w = weights[[j for j, _, _ in found], [k for _, k, _ in found]]
    return RecomputeNode.apply(out, backend, terms, len(states), w, *states, *(p for _, _, ps in terms for p in ps))
