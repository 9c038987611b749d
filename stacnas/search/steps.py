"""One search step in each optimization order, on a supernet with `weights()` and `alphas()`.

- one-level (StacNAS): one loss on a training batch; weights (SGD) and α (Adam) step together.
- first (DARTS first order): α steps on the gradient of the validation loss, then the weights on the training loss.
- second (DARTS second order): α steps on the gradient of the validation loss after one unrolled weight step,
  ∇α L_val(w', α) − η ∇²_{α,w} L_train(w, α) ∇_{w'} L_val(w', α), with w' = w − η (momentum·buf + ∇w L_train + wd·w)
  and the Hessian-vector product by central finite differences at w ± R·∇_{w'} L_val, R = 0.01 / ‖∇_{w'} L_val‖
  (DARTS' `Architect._backward_step_unrolled`).
Gradients are averaged over data-parallel ranks (stacnas.runtime.distributed) before any optimizer step.

Mixed precision (`Precision`): the forward passes run under its autocast, the loss in float32; with float16 every
loss is multiplied by the gradient scaler's scale before differentiation and the gradients divided by it before
clipping (a step whose gradients overflowed is skipped); the caller updates the scale once per search step.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..runtime.distributed import Context, average_gradients, average_tensors


@dataclass
class Precision:
    """How a step computes: `autocast()` is the forward pass's context, `scaler` the gradient scaler (disabled: its
    scale, unscale_ and step are the plain operations). The default is plain float32."""
    autocast: object = contextlib.nullcontext
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cpu", enabled=False))


FULL = Precision()


def _loss(model, x, y, amp: Precision):
    with amp.autocast():
        logits = model(x)
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), y), logits


def weight_step(model, x, y, w_opt, grad_clip: float, ctx: Context, amp: Precision = FULL):
    """Step the weights on the training loss; α is left untouched (its gradient is discarded). Returns the loss,
    the logits and the weights' gradient norm before clipping."""
    loss, logits = _loss(model, x, y, amp)
    weights = list(model.weights())
    w_opt.zero_grad(set_to_none=True)
    grads = torch.autograd.grad(amp.scaler.scale(loss), weights)
    for p, g in zip(weights, grads):
        p.grad = g
    average_gradients(weights, ctx)
    amp.scaler.unscale_(w_opt)
    grad_norm = torch.nn.utils.clip_grad_norm_(weights, grad_clip)
    amp.scaler.step(w_opt)
    return loss.detach(), logits.detach(), grad_norm


def joint_step(model, x, y, w_opt, a_opt, grad_clip: float, ctx: Context, amp: Precision = FULL):
    """One-level: one backward, then weights and α step together (the weights' gradient clipped). Returns the loss,
    the logits and the weights' gradient norm before clipping."""
    loss, logits = _loss(model, x, y, amp)
    w_opt.zero_grad(set_to_none=True)
    a_opt.zero_grad(set_to_none=True)
    amp.scaler.scale(loss).backward()
    average_gradients(model.parameters(), ctx)
    amp.scaler.unscale_(w_opt)
    amp.scaler.unscale_(a_opt)
    grad_norm = torch.nn.utils.clip_grad_norm_(list(model.weights()), grad_clip)
    amp.scaler.step(w_opt)
    amp.scaler.step(a_opt)
    return loss.detach(), logits.detach(), grad_norm


def _set_alpha_grads(model, grads, a_opt):
    a_opt.zero_grad(set_to_none=True)
    for a, g in zip(model.alphas(), grads):
        a.grad = g


def alpha_step_first_order(model, x_val, y_val, a_opt, ctx: Context, amp: Precision = FULL):
    loss, _ = _loss(model, x_val, y_val, amp)
    grads = average_tensors(torch.autograd.grad(amp.scaler.scale(loss), model.alphas()), ctx)
    _set_alpha_grads(model, grads, a_opt)
    amp.scaler.unscale_(a_opt)
    amp.scaler.step(a_opt)
    return loss.detach()


def unrolled_alpha_grads(model, x_train, y_train, x_val, y_val, eta: float, w_opt, ctx: Context, r: float = 0.01,
                         amp: Precision = FULL):
    """The second-order α gradient. Weights and BN buffers are restored afterwards: only α's gradient results.

    r: the finite-difference radius is r / ‖∇_{w'} L_val‖ (DARTS: 0.01). ReLU and max-pool make the loss only
    piecewise smooth, so at DARTS' radius the Hessian-vector product is an approximation; tests use a small r
    to check the arithmetic against finite differences of the unrolled objective itself. `amp` gives the forward
    passes' autocast only: its scaler must be disabled (SearchConfig refuses fp16 with second order).
    """
    weights, alphas = list(model.weights()), model.alphas()
    saved = [p.detach().clone() for p in weights]
    saved_buffers = [b.detach().clone() for b in model.buffers()]
    group = w_opt.param_groups[0]
    momentum, weight_decay = group["momentum"], group["weight_decay"]

    def train_grads(wrt):
        loss, _ = _loss(model, x_train, y_train, amp)
        return average_tensors(torch.autograd.grad(loss, wrt), ctx)

    # w' = w − η (momentum·buf + ∇w L_train + wd·w), SGD's next step without clipping (as DARTS)
    grads = train_grads(weights)
    with torch.no_grad():
        for p, g in zip(weights, grads):
            buf = w_opt.state.get(p, {}).get("momentum_buffer")
            moment = buf * momentum if buf is not None else 0.0
            p.sub_(eta * (moment + g + weight_decay * p))
    loss_val, _ = _loss(model, x_val, y_val, amp)
    grads = average_tensors(torch.autograd.grad(loss_val, alphas + weights), ctx)
    d_alpha, d_w = grads[:len(alphas)], grads[len(alphas):]

    R = r / torch.cat([g.reshape(-1) for g in d_w]).norm()
    hessian = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, w0, v in zip(weights, saved, d_w):
                p.copy_(w0 + sign * R * v)
        hessian.append(train_grads(alphas))
    with torch.no_grad():
        for p, w0 in zip(weights, saved):
            p.copy_(w0)
        for b, b0 in zip(model.buffers(), saved_buffers):
            b.copy_(b0)
    return [da - eta * (hp - hn) / (2 * R) for da, hp, hn in zip(d_alpha, *hessian)], loss_val.detach()


def alpha_step_second_order(model, x_train, y_train, x_val, y_val, eta, w_opt, a_opt, ctx: Context,
                            amp: Precision = FULL):
    grads, loss_val = unrolled_alpha_grads(model, x_train, y_train, x_val, y_val, eta, w_opt, ctx, amp=amp)
    _set_alpha_grads(model, grads, a_opt)
    a_opt.step()
    return loss_val
