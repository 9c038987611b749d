"""lean and recompute supernets compute exactly what the reference supernet computes: logits, every weight and α
gradient, and the BN running statistics (updated exactly once), in training and in eval mode."""
import copy

import pytest
import torch
import torch.nn.functional as F

from stacnas import fused
from stacnas.nn import Supernet
from stacnas.spaces import BUILTIN_SPACES, SearchSpace

BACKENDS = fused.available_backends("cpu")  # the supernets below run on CPU tensors


def _step(model, x, y, seed):
    torch.manual_seed(seed)  # `noise` draws from the global RNG
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    return logits.detach()


def _uneven_space():
    normal = tuple(("skip_connect", "max_pool_3x3") if e % 4 == 0 else
                   ("none", "skip_connect", "sep_conv_3x3", "dil_conv_5x5", "avg_pool_3x3", "nor_conv_1x1")
                   for e in range(14))
    return SearchSpace("uneven", normal, ("max_pool_3x3", "skip_connect", "noise", "sep_conv_5x5"))


SPACES = {**{name: BUILTIN_SPACES[name] for name in ("darts", "s1", "s3", "s4")}, "uneven": _uneven_space()}


def _assert_no_worse_than_reference(ours, reference, truth, name):
    """fp32 results against the fp64 truth: within 1e-5 of the tensor's largest entry, or at most twice the
    reference's own fp32 error where that is larger (rounding in BN over small batches)."""
    truth = truth.double()
    err_ours = (ours.double() - truth).abs().max().item()
    err_ref = (reference.double() - truth).abs().max().item()
    assert err_ours <= max(2 * err_ref, 1e-5 * truth.abs().max().item()), f"{name}: {err_ours} vs reference {err_ref}"


@pytest.mark.parametrize("space", sorted(SPACES))
@pytest.mark.parametrize("mode", ["lean", "recompute"])
@pytest.mark.parametrize("size", [10, 9])
def test_mode_matches_reference(space, mode, size):
    torch.manual_seed(0)
    reference = Supernet(SPACES[space], C=4, layers=5, num_classes=6, mode="reference")
    with torch.no_grad():
        for alpha in reference.alphas():
            alpha.normal_()
    model = copy.deepcopy(reference).set_mode(mode)
    truth = copy.deepcopy(reference).double()
    x, y = torch.randn(3, 3, size, size), torch.randint(0, 6, (3,))
    for step in range(2):  # the second step sees running statistics updated by the first
        ours, theirs = _step(model, x, y, step), _step(reference, x, y, step)
        _assert_no_worse_than_reference(ours, theirs, _step(truth, x.double(), y, step), f"logits {step}")
    named = list(reference.named_parameters())
    for (name, p), q, t in zip(named, model.parameters(), truth.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            _assert_no_worse_than_reference(q.grad, p.grad, t.grad, name)
    for (name, b), c, t in zip(reference.named_buffers(), model.buffers(), truth.buffers()):
        if b.dtype.is_floating_point:
            _assert_no_worse_than_reference(c, b, t, name)
        else:
            assert torch.equal(c, b), name  # num_batches_tracked: updated exactly once per step


@pytest.mark.parametrize("mode", ["lean", "recompute"])
def test_eval_mode_uses_running_statistics(mode):
    torch.manual_seed(1)
    reference = Supernet(BUILTIN_SPACES["darts"], C=4, layers=4, mode="reference")
    reference(torch.randn(4, 3, 8, 8))  # move the running statistics away from 0/1
    model = copy.deepcopy(reference).set_mode(mode)
    reference.eval(), model.eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lean_with_each_backend(backend):
    torch.manual_seed(2)
    reference = Supernet(BUILTIN_SPACES["darts"], C=4, layers=3, mode="reference")
    model = copy.deepcopy(reference).set_mode("lean", kernels=backend)
    truth = copy.deepcopy(reference).double()
    # BN over n = 4·4·4 values per channel in the last cells: fewer make fp32 rounding the dominant difference
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    _assert_no_worse_than_reference(_step(model, x, y, 0), _step(reference, x, y, 0), _step(truth, x.double(), y, 0),
                                    "logits")
    for name in ("alpha_normal", "alpha_reduce"):
        _assert_no_worse_than_reference(getattr(model, name).grad, getattr(reference, name).grad,
                                        getattr(truth, name).grad, name)


def test_recompute_supports_autograd_grad():
    """DARTS' second-order step takes torch.autograd.grad w.r.t. the weights; recompute mode must give it."""
    torch.manual_seed(3)
    reference = Supernet(BUILTIN_SPACES["s3"], C=4, layers=3, mode="reference")
    model = copy.deepcopy(reference).set_mode("recompute")
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 10, (2,))
    truth = copy.deepcopy(reference).double()
    ours = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.weights()))
    theirs = torch.autograd.grad(F.cross_entropy(reference(x), y), list(reference.weights()))
    exact = torch.autograd.grad(F.cross_entropy(truth(x.double()), y), list(truth.weights()))
    for i, (a, b, c) in enumerate(zip(ours, theirs, exact)):
        _assert_no_worse_than_reference(a, b, c, f"weight {i}")


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown memory mode 'frugal'"):
        Supernet(BUILTIN_SPACES["s2"], C=4, layers=3, mode="frugal")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("mode, kernels", [("lean", "auto"), ("lean", "triton"), ("recompute", "auto")])
def test_modes_on_cuda(mode, kernels):
    torch.manual_seed(4)
    reference = Supernet(BUILTIN_SPACES["darts"], C=8, layers=5, mode="reference").cuda()
    model = copy.deepcopy(reference).set_mode(mode, kernels=kernels)
    truth = copy.deepcopy(reference).double()
    x, y = torch.randn(8, 3, 16, 16, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    _assert_no_worse_than_reference(_step(model, x, y, 0), _step(reference, x, y, 0), _step(truth, x.double(), y, 0),
                                    "logits")
    for (name, p), q, t in zip(reference.named_parameters(), model.parameters(), truth.parameters()):
        _assert_no_worse_than_reference(q.grad, p.grad, t.grad, name)


@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (2, 3, 8, 8), (1, 2, 5, 6), (1, 1, 1, 1), (1, 1, 2, 3)])
@pytest.mark.parametrize("stride", [1, 2])
def test_lean_pools_equal_pytorch_pools(shape, stride):
    from stacnas.nn.routes import avg_pool3x3, max_pool3x3

    x = torch.randn(*shape, dtype=torch.float64)
    x.view(-1)[0] = float("nan")  # max-pool propagates NaN
    torch.testing.assert_close(max_pool3x3(x, stride), F.max_pool2d(x, 3, stride, 1), rtol=0, atol=0,
                               equal_nan=True)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(avg_pool3x3(x, stride), F.avg_pool2d(x, 3, stride, 1, count_include_pad=False),
                               rtol=1e-14, atol=1e-14)
    assert torch.autograd.gradcheck(lambda t: avg_pool3x3(t, stride), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", [0.1, 0.4, 0.7])
def test_lean_dropout_is_pytorchs_bit_for_bit_keeping_a_bool_mask(p, dtype):
    from stacnas.nn.routes import dropout

    h = torch.randn(3, 5, 7, 9, dtype=dtype, requires_grad=True)
    grad = torch.randn_like(h)
    module = torch.nn.Dropout(p)
    found = {}
    for name, run in (("pytorch", module), ("lean", lambda t: dropout(module, t))):
        kept = []
        torch.manual_seed(3)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
            y = run(h)
        found[name] = (y, *torch.autograd.grad(y, h, grad), torch.rand(3), kept)  # and the draws after it
    for a, b in zip(found["pytorch"][:3], found["lean"][:3]):
        assert torch.equal(a, b)
    assert found["lean"][1].abs().sum() > 0 and (found["lean"][0] == 0).any()  # some dropped, some kept
    assert [t.dtype for t in found["lean"][3]] == [torch.bool]
    module.eval()
    assert dropout(module, h) is h


# (in channels, out channels, kernel, stride, padding, dilation, groups): the routes of routes.conv_forward (those of
# the backward, stacnas.fused.conv_chain_backward, are tested in test_fused.py)
CONVS = {"depthwise": (4, 4, 3, 1, 1, 1, 4), "dilated stride 2": (4, 4, 3, 2, 2, 2, 4),
         "pointwise": (4, 6, 1, 1, 0, 1, 1), "pointwise stride 2": (4, 6, 1, 2, 0, 1, 1),
         "dense 3x3": (4, 6, 3, 1, 1, 1, 1), "grouped": (4, 6, 3, 1, 1, 1, 2)}


@pytest.mark.parametrize("conv", sorted(CONVS))
@pytest.mark.parametrize("size", [(7, 9), (8, 8)])
@pytest.mark.parametrize("bias", [False, True])
def test_lean_conv_forward_routes_equal_pytorch(conv, size, bias):
    from stacnas.nn.routes import conv_forward

    c_in, c_out, k, stride, padding, dilation, groups = CONVS[conv]
    g = torch.Generator().manual_seed(k + stride + groups)
    x = torch.randn(3, c_in, *size, generator=g, dtype=torch.float64)
    weight = torch.randn(c_out, c_in // groups, k, k, generator=g, dtype=torch.float64)
    b = torch.randn(c_out, generator=g, dtype=torch.float64) if bias else None
    torch.testing.assert_close(conv_forward(x, weight, b, stride, padding, dilation, groups),
                               F.conv2d(x, weight, b, stride, padding, dilation, groups), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [(7, 9), (8, 8), (5, 6), (1, 1)])
@pytest.mark.parametrize("bias", [False, True])
def test_lean_factorized_reduce_equals_its_two_convs(size, bias):
    """FactorizedReduceConvs against ReLU, the two 1×1 stride-2 convs (the second on the input shifted by a pixel,
    padded on odd sizes) and their concat, by PyTorch; fp64 gradcheck of h, weights and biases; it keeps h alone."""
    from stacnas.nn.routes import factorized_reduce

    g = torch.Generator().manual_seed(size[0] + bias)
    convs = [torch.nn.Conv2d(4, 3, 1, stride=2, bias=bias).double() for _ in range(2)]
    h = torch.randn(2, 4, *size, generator=g, dtype=torch.float64, requires_grad=True)
    a = F.relu(h)
    shifted = F.pad(a[:, :, 1:, 1:], (0, size[1] % 2, 0, size[0] % 2))
    expected = torch.cat([convs[0](a), convs[1](shifted)], dim=1)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        found = factorized_reduce(convs, h, act=a.detach())
    torch.testing.assert_close(found, expected, rtol=1e-12, atol=1e-12)
    assert [t.shape for t in kept] == [h.shape, convs[0].weight.shape, convs[1].weight.shape]  # h, no activation
    params = [p for c in convs for p in c.parameters()]
    grad = torch.randn(expected.shape, generator=g, dtype=torch.float64)
    for e, f in zip(torch.autograd.grad(expected, [h, *params], grad), torch.autograd.grad(found, [h, *params], grad)):
        torch.testing.assert_close(f, e, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t, *ps: factorized_reduce(convs, t), (h, *params))


def test_cell_output_has_no_concat_copy():
    """Nodes written into a CellOutput: the cell's output is their storage, equals torch.cat of them, and gradients
    equal those through cat, although node 1 is read by node 2's ops after node 2's slot was written."""
    from stacnas.nn import MixedOp
    from stacnas.nn.cell_output import CellOutput
    from stacnas.nn.lean import lean_node

    torch.manual_seed(0)
    edges = [MixedOp(4, 1, mode="lean") for _ in range(5)]
    weights = torch.softmax(torch.randn(5, 8), -1).requires_grad_()
    s0, s1 = torch.randn(2, 4, 6, 6, requires_grad=True), torch.randn(2, 4, 6, 6, requires_grad=True)

    def cell(out):
        states = [s0, s1]
        states.append(lean_node([e._ops for e in edges[:2]], states, weights[:2], out=out))
        states.append(lean_node([e._ops for e in edges[2:]], states, weights[2:], out=out))
        return out.gather(states[2:]) if out is not None else torch.cat(states[2:], dim=1), states[2:]

    ours, nodes = cell(CellOutput(2))
    theirs, _ = cell(None)
    assert all(n.untyped_storage().data_ptr() == ours.untyped_storage().data_ptr() for n in nodes)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    grad = torch.randn_like(ours)
    found = torch.autograd.grad(ours, [s0, s1, weights], grad)
    for a, b in zip(found, torch.autograd.grad(theirs, [s0, s1, weights], grad)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cell_output_refuses_unwritten_nodes():
    from stacnas.nn.cell_output import CellOutput

    out = CellOutput(2)
    node = out.slot(torch.randn(2, 3, 4, 4))
    with pytest.raises(RuntimeError, match="every node's output"):
        out.gather([node, torch.randn(2, 3, 4, 4)])


def test_lean_supernet_traces_under_torch_compile():
    """torch.compile cannot follow the nodes' shared storage, so a traced lean cell concatenates instead."""
    torch.manual_seed(0)
    model = Supernet(BUILTIN_SPACES["darts"], C=4, layers=3, nodes=2, mode="lean")
    x = torch.randn(2, 3, 8, 8)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=False)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
