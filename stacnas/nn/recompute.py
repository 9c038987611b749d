"""The recompute memory mode: a node keeps only its input states and weights; backward recomputes each candidate,
one at a time, the way the lean mode computes it, with the BN running statistics frozen (they were updated once, in
forward) and, where a candidate runs through its own forward (`noise`, anything stacnas.nn.recognize does not know) or
is a Dropout, the RNG states replayed, as torch.utils.checkpoint does: the CPU's and the device's. Works with
torch.autograd.grad too (DARTS' second-order step)."""
from __future__ import annotations

import contextlib

import torch
from torch.autograd.function import once_differentiable

from .. import fused
from . import recognize
from .batchnorm import batch_stats, frozen_running_stats
from .cell_output import CellOutput
from .lean import own_forward, lean_node, lean_term, shared_relu, terms
from .routes import normalized


def _rng_states(device):
    """The RNG states a candidate may draw from: the CPU's, and the device's when it is a GPU."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


@contextlib.contextmanager
def _replayed_rng(device, states):
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(states[0])
        if states[1] is not None:
            torch.cuda.set_rng_state(states[1], device)
        yield


def _autocast_state(device):
    """A context that recreates the forward's autocast state (backward runs outside it): the recomputed terms must
    be the forward's."""
    if not torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext
    dtype = torch.get_autocast_dtype(device.type)
    return lambda: torch.autocast(device.type, dtype=dtype)


class RecomputeNode(torch.autograd.Function):
    """y = sum over terms t of w_t · op_t(states[s_t]), written into the next slot of `out` (a CellOutput) when
    given; keeps only the states and w."""

    @staticmethod
    def forward(ctx, out, backend, call, node_terms, n_states, w, *tensors):
        states = tensors[:n_states]  # the rest are the ops' parameters: inputs, so that they get gradients
        relu_of = shared_relu(states)
        # the terms draw in this order in forward and again in backward, from the same states
        rng = _rng_states(states[0].device) if any(recognize.draws_random_numbers(op) for _, op, _ in node_terms) \
            else None
        acc, stats = None, {}
        for t, (s, op, _) in enumerate(node_terms):
            x, bn = lean_term(op, states[s], relu_of(s), backend, call)
            o = x
            if bn is not None:  # transient: one term at a time; its running statistics are updated once, here
                mean, var, training = batch_stats(bn, x, backend)
                o = normalized(x, mean, var, bn.eps)
                if training:
                    stats[t] = (mean, var)  # backward recomputes x exactly: its batch statistics are these
            if acc is None:  # every term has the node's dtype (the reference's: w_t is 0-dim); the sum is float32+
                dtype, wide = o.dtype, torch.promote_types(o.dtype, torch.float32)
                direct = out is not None and wide == dtype
                acc = torch.mul(o.to(wide), w[t], out=out.slot(o) if direct else None)
            else:
                acc.addcmul_(o, w[t])
        y = acc
        if y.dtype != dtype:  # a half-precision node: back to its dtype, into its slot
            y = acc.to(dtype)
            if out is not None:
                y = out.slot(y).copy_(y)
        ctx.node_terms, ctx.rng, ctx.stats, ctx.backend, ctx.call = node_terms, rng, stats, backend, call
        ctx.autocast = _autocast_state(states[0].device)
        ctx.save_for_backward(w, *states)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        w, *states = ctx.saved_tensors
        leaves = [s.detach().requires_grad_(s.requires_grad) for s in states]
        relu_of = shared_relu(states)
        grad_states = [None] * len(states)
        grad_params, grad_w = [], torch.zeros_like(w)
        replay = _replayed_rng(leaves[0].device, ctx.rng) if ctx.rng is not None else contextlib.nullcontext()
        with replay:
            for t, (s, op, params) in enumerate(ctx.node_terms):
                with frozen_running_stats(op), torch.enable_grad(), ctx.autocast():
                    x, bn = lean_term(op, leaves[s], relu_of(s), ctx.backend, ctx.call)
                grad_x, grad_w[t] = _term_backward(grad.to(x.dtype), x.detach(), bn, ctx.stats.get(t), w[t:t + 1],
                                                    ctx.backend)
                wanted = ([leaves[s]] if leaves[s].requires_grad else []) + [p for p in params if p.requires_grad]
                found = iter(torch.autograd.grad(x, wanted, grad_x, allow_unused=True) if x.requires_grad and wanted
                             else [None] * len(wanted))
                if leaves[s].requires_grad:
                    g_state = next(found)
                    if g_state is not None:
                        grad_states[s] = g_state if grad_states[s] is None else grad_states[s] + g_state
                grad_params.extend(next(found) if p.requires_grad else None for p in params)
        return (None, None, None, None, None, grad_w, *grad_states, *grad_params)


def _term_backward(grad, x, bn, batch, w_t, backend):
    """(dL/dx, dL/dw_t) for the term w_t · x, or w_t · bn(x) with the BN folded: one fused backward pass from x and
    the BN's statistics (batch: x's batch statistics, as forward found them; None in eval), the BN's output never
    formed."""
    if bn is None:  # products in x's dtype, as the reference's; the sum in w_t's (float32 or wider)
        return (grad * w_t).to(x.dtype), (grad * x).sum(dtype=w_t.dtype)
    if batch is not None:
        (mean, var), training = batch, True
    else:
        mean, var, training = bn.running_mean, bn.running_var, False
    (grad_x,), grad_w = fused.mixed_sum_backward(grad, [x], w_t, [True], mean[None], var[None], training, bn.eps,
                                                 backend)
    return grad_x, grad_w[0]


def recompute_node(edges, states, weights, backend=None, out: CellOutput | None = None, call=own_forward):
    """lean_node's result, keeping only the states and the weights for backward."""
    backend = fused.resolve_backend(backend, states[0].device)
    found = terms(edges, weights.shape[-1])
    if not found:
        return lean_node(edges, states, weights, backend, out, call)
    node_terms = [(j, op, list(op.parameters())) for j, _, op in found]
    w = weights[[j for j, _, _ in found], [k for _, k, _ in found]]
    return RecomputeNode.apply(out, backend, call, node_terms, len(states), w, *states,
                               *(p for _, _, ps in node_terms for p in ps))
