"""The lean memory mode: every (edge, op) term of a node summed by one fused `mixed_sum` call.

  - ops ending in BatchNorm(affine=False) hand over the BN's input z and batch statistics: the BN is folded into
    the sum, so its output o = (z - mean)·rstd is never stored (dL/dw = <g, o> comes from z and the statistics);
  - `none` is skipped (its output is 0, so it adds nothing and its weight gets no gradient from the sum);
  - ReLU(h) is computed once per state and shared by every conv candidate of every edge leaving it; the convs keep
    h, not ReLU(h), and recompute the ReLU in backward (likewise BN+ReLU inside sep_conv keeps only the BN input);
  - max-pool keeps no indices, Dropout on a CPU keeps a bool mask, and convs and pools take the faster routes of
    stacnas.nn.routes;
  - a cell's preprocess keeps the previous cell's output, not ReLU of it.
The result equals the reference MixedOps' to rounding (the fused sum, BN statistics and the routes associate their
sums differently; tests compare against float64).

Every tensor kept for backward has the dtype the reference keeps it in. Under torch.autocast the convolutions run
in the autocast dtype and their outputs (the folded BNs' inputs) stay in it, as the reference's do; so do pools and
node states: the reference's w_k * op_k(x) does not promote, a 0-dim weight not being wider than a tensor's dtype.
Every fused kernel reads these low-precision tensors and accumulates in float32 (sums, BN statistics, <g, z>); the
weights and BN statistics stay float32.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import fused
from . import recognize
from .batchnorm import update_running_stats
from .cell_output import CellOutput
from .routes import conv_chain, dropout, factorized_reduce, fast_pool


def own_forward(op, h):
    return op(h)


def lean_term(op: nn.Module, h: torch.Tensor, relu_h, backend=None, call=own_forward):
    """One candidate on state h, as (x, bn): x is the input z of a trailing BN(affine=False) to fold (bn given), or
    the op's output (bn None). relu_h() gives the shared ReLU(h); backend is that of the fused ops; call(op, h) runs
    an op whose structure is not recognized (stacnas.nn.recognize) through its own forward."""
    kind, parts = recognize.recognize(op)
    if kind == "identity":
        return h, None
    if kind == "dropout":
        return dropout(parts[0], h), None
    if kind == "factorized_reduce":
        convs, bn, pads = parts
        if (h.shape[2] % 2 or h.shape[3] % 2) and not pads:
            return call(op, h), None  # DARTS' own FactorizedReduce does not handle odd sizes: run it as it is
        return factorized_reduce(convs, h, relu_h()), bn
    if kind in ("pool_bn", "pool"):
        pooled = (fast_pool(parts[0], backend) or parts[0])(h)
        return pooled, (parts[1] if kind == "pool_bn" else None)
    if kind == "conv_chain":
        return conv_chain(parts[0], h, backend, act=relu_h()), parts[1]
    return call(op, h), None


def shared_relu(states):
    """relu_of(j)() is ReLU(states[j]), computed once however many convs read it."""
    cache = {}

    def relu_of(j):
        def relu():
            if j not in cache:
                cache[j] = F.relu(states[j].detach())
            return cache[j]
        return relu
    return relu_of


def lean_preprocess(op: nn.Module, s: torch.Tensor, backend=None) -> torch.Tensor:
    """A cell's preprocess op (ReLU-conv-BN or FactorizedReduce) keeping its input s, not ReLU(s): s is the previous
    cell's output, which the two cells reading it then share for backward."""
    x, bn = lean_term(op, s, shared_relu([s])(0), backend)
    return x if bn is None else bn(x)


def common_dtype(xs) -> torch.dtype:
    """The dtype a node's sum is in: PyTorch's promotion of its terms' dtypes, as the reference's sum(w_k * op_k(x))
    promotes (its weights w_k are 0-dim: they do not widen the terms)."""
    dtype = xs[0].dtype
    for x in xs[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


def terms(edges, width: int):
    """(j, k, op) for every candidate op k of edge j but `none` (its output is 0: it adds nothing to the sum), edges[j]
    being edge j's candidates; an edge's candidates past the weights' `width` are not used (as zip(weights, ops) in
    DARTS' MixedOp leaves them)."""
    return [(j, k, op) for j, edge in enumerate(edges) for k, op in enumerate(edge[:width])
            if recognize.structure(op) != "none"]


def batch_statistics(bn: nn.BatchNorm2d) -> bool:
    """Whether bn normalizes with the batch's statistics (training, or not tracking running ones)."""
    return bn.training or not bn.track_running_stats


def _one_kind_of_bn(xs, bns):
    """(xs, bns, training, eps): one fused sum folds BNs of one kind (batch or running statistics, one eps), those of
    the first; any other BN is applied here, its term then plain."""
    first = next((bn for bn in bns if bn is not None), None)
    if first is None:
        return xs, bns, True, 1e-5
    kind = (batch_statistics(first), first.eps)
    for t, bn in enumerate(bns):
        if bn is not None and (batch_statistics(bn), bn.eps) != kind:
            xs[t], bns[t] = bn(xs[t]), None
    return xs, bns, kind[0], kind[1]


def lean_node(edges, states, weights, backend=None, out: CellOutput | None = None, call=own_forward):
    """One node: sum over its incoming edges (edges[j], its candidates, reads states[j]) of
    sum_k weights[j, k] · op_jk(states[j]), written into the next slot of `out` when given. call: see lean_term."""
    backend = fused.resolve_backend(backend, states[0].device)
    relu_of = shared_relu(states)
    found = terms(edges, weights.shape[-1])
    if not found:
        return _zeros(edges, states, weights)
    xs, bns = [], []
    for j, _, op in found:
        x, bn = lean_term(op, states[j], relu_of(j), backend, call)
        xs.append(x)
        bns.append(bn)
    xs, bns, training, eps = _one_kind_of_bn(xs, bns)
    normalize = [bn is not None for bn in bns]
    running_mean = running_var = None
    if not training and any(normalize):
        C = xs[0].shape[1]
        running_mean = torch.stack([bn.running_mean if bn is not None else xs[0].new_zeros(C) for bn in bns])
        running_var = torch.stack([bn.running_var if bn is not None else xs[0].new_ones(C) for bn in bns])
    w = weights[[j for j, _, _ in found], [k for _, k, _ in found]]
    dtype = common_dtype(xs)
    xs = [x.to(dtype) for x in xs]  # w keeps its dtype: the kernels read it widened
    y, mean, var = fused.mixed_sum(xs, w, normalize, running_mean, running_var, training, eps, backend=backend,
                                   out=None if out is None else out.slot(xs[0]))
    if training:
        updated = [k for k, bn in enumerate(bns) if bn is not None and bn.training and bn.track_running_stats]
        update_running_stats([bns[k] for k in updated], mean[updated], var[updated], xs[0].numel() // xs[0].shape[1])
    return y
