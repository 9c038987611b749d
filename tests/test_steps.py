"""Which parameters each search step changes, and the second-order α gradient against finite differences."""
import pytest
import torch
import torch.nn.functional as F

from stacnas.nn import Supernet
from stacnas.runtime.distributed import Context
from stacnas.search import steps
from stacnas.spaces import BUILTIN_SPACES

ONE = Context()


def _model(dtype=torch.float32, mode="lean"):
    torch.manual_seed(0)
    model = Supernet(BUILTIN_SPACES["darts"], C=3, layers=3, nodes=2, num_classes=4, in_channels=2, mode=mode)
    with torch.no_grad():
        for a in model.alphas():
            a.normal_(0, 0.5)  # away from uniform: the softmax Jacobian is not symmetric
    return model.to(dtype)


def _batches(dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    x, xv = torch.randn(2, 6, 2, 7, 7, generator=gen, dtype=dtype)
    y, yv = torch.randint(0, 4, (2, 6), generator=gen)
    return x, y, xv, yv


def _optimizers(model, momentum=0.9, wd=3e-4):
    return (torch.optim.SGD(model.weights(), 0.05, momentum=momentum, weight_decay=wd),
            torch.optim.Adam(model.alphas(), 3e-3, betas=(0.5, 0.999), weight_decay=1e-3))


def _snapshot(model):
    return ([p.detach().clone() for p in model.weights()], [a.detach().clone() for a in model.alphas()])


def _changed(before, after):
    return [not torch.equal(b, a) for b, a in zip(before, after)]


def test_joint_step_changes_weights_and_alpha_from_one_loss():
    model, (x, y, _, _) = _model(), _batches()
    w_opt, a_opt = _optimizers(model)
    w0, a0 = _snapshot(model)
    steps.joint_step(model, x, y, w_opt, a_opt, 5.0, ONE)
    w1, a1 = _snapshot(model)
    assert all(_changed(a0, a1)) and sum(_changed(w0, w1)) > 0.9 * len(w0)


def test_weight_step_leaves_alpha_alone():
    model, (x, y, _, _) = _model(), _batches()
    w_opt, a_opt = _optimizers(model)
    w0, a0 = _snapshot(model)
    steps.weight_step(model, x, y, w_opt, 5.0, ONE)
    w1, a1 = _snapshot(model)
    assert not any(_changed(a0, a1)) and sum(_changed(w0, w1)) > 0.9 * len(w0)
    assert all(a.grad is None for a in model.alphas())


def test_first_order_alpha_step_uses_the_validation_batch_only():
    model, (_, _, xv, yv) = _model(), _batches()
    w_opt, a_opt = _optimizers(model)
    expected = torch.autograd.grad(F.cross_entropy(model(xv), yv), model.alphas())
    for p in model.weights():
        p.grad = None
    w0, a0 = _snapshot(model)
    steps.alpha_step_first_order(model, xv, yv, a_opt, ONE)
    w1, a1 = _snapshot(model)
    assert not any(_changed(w0, w1)) and all(_changed(a0, a1))
    for a, g in zip(model.alphas(), expected):
        torch.testing.assert_close(a.grad, g, rtol=1e-5, atol=1e-7)


def _unrolled_objective(model, x, y, xv, yv, eta, momentum_bufs, momentum, wd):
    """L_val(w − η(μ·buf + ∇w L_train + wd·w), α) computed directly: the function the second-order step
    differentiates with respect to α."""
    weights = list(model.weights())
    saved = [p.detach().clone() for p in weights]
    with torch.enable_grad():
        g = torch.autograd.grad(F.cross_entropy(model(x), y), weights)
    with torch.no_grad():
        for p, gi, buf in zip(weights, g, momentum_bufs):
            p.sub_(eta * (momentum * buf + gi + wd * p))
        loss = F.cross_entropy(model(xv), yv).item()
        for p, s in zip(weights, saved):
            p.copy_(s)
    return loss


@pytest.mark.parametrize("mode", ["reference", "lean"])
def test_second_order_gradient_matches_finite_differences(mode):
    model, (x, y, xv, yv) = _model(torch.float64, mode), _batches(torch.float64)
    momentum, wd, eta = 0.9, 3e-4, 0.5  # a large η makes the Hessian term matter
    w_opt, _ = _optimizers(model, momentum, wd)
    bufs = [0.01 * torch.randn_like(p) for p in model.weights()]
    for p, buf in zip(model.weights(), bufs):
        w_opt.state[p]["momentum_buffer"] = buf.clone()
    w0, a0 = _snapshot(model)
    grads, _ = steps.unrolled_alpha_grads(model, x, y, xv, yv, eta, w_opt, ONE, r=1e-5)
    w1, a1 = _snapshot(model)
    assert not any(_changed(w0, w1)) and not any(_changed(a0, a1))  # restores the weights exactly

    first_order = torch.autograd.grad(F.cross_entropy(model(xv), yv), model.alphas())
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        direction = [torch.randn(a.shape, generator=gen, dtype=torch.float64) for a in model.alphas()]
        eps, values = 1e-7, []
        for sign in (1, -1):
            with torch.no_grad():
                for a, d, a_0 in zip(model.alphas(), direction, a0):
                    a.copy_(a_0 + sign * eps * d)
            values.append(_unrolled_objective(model, x, y, xv, yv, eta, bufs, momentum, wd))
        with torch.no_grad():
            for a, a_0 in zip(model.alphas(), a0):
                a.copy_(a_0)
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = sum((g * d).sum() for g, d in zip(grads, direction)).item()
        first = sum((g * d).sum() for g, d in zip(first_order, direction)).item()
        assert abs(analytic - numeric) < 1e-4 * abs(numeric) + 1e-9
        assert abs(first - numeric) > 20 * abs(analytic - numeric)  # the second-order term is really there


def test_second_order_step_changes_only_alpha():
    model, (x, y, xv, yv) = _model(), _batches()
    w_opt, a_opt = _optimizers(model)
    buffers = [b.clone() for b in model.buffers()]
    w0, a0 = _snapshot(model)
    steps.alpha_step_second_order(model, x, y, xv, yv, 0.05, w_opt, a_opt, ONE)
    w1, a1 = _snapshot(model)
    assert not any(_changed(w0, w1)) and all(_changed(a0, a1))
    assert all(torch.equal(b, c) for b, c in zip(buffers, model.buffers()))
