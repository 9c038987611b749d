"""stacnas.nn.use_fused_mixed_ops on the unmodified search networks of the DARTS-family codebases (written here in
their structures: tests/peer_networks): the same outputs, every gradient and BN running statistic as the original in
float64, in lean and recompute, training and eval; the same modules, names, methods and state_dict; what it cannot
compute it leaves alone and says so; a forward it does not know is caught by the first-use check."""
import copy
import io
import pickle
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import peer_networks
import stacnas.nn
from peer_networks import autodl_darts, autodl_nb201, darts, naslib, nni, pcdarts, pdarts, robustdarts
from stacnas.nn import Supernet
from stacnas.ops import PRIMITIVES
from stacnas.spaces import BUILTIN_SPACES

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # benchmarks/gpu_check.sh runs the CUDA ones

# name: (network module, build arguments, {structure: modules fused})
PEERS = {
    "darts": (darts, {}, {"DARTS search cell (quark0/darts, RobustDARTS)": 5,
                          "DARTS MixedOp (quark0/darts, RobustDARTS)": 70}),
    "robustdarts-s1": (robustdarts, {"space": "s1"}, {"DARTS search cell (quark0/darts, RobustDARTS)": 5,
                                                      "DARTS MixedOp (quark0/darts, RobustDARTS)": 70}),
    "robustdarts-s3": (robustdarts, {"space": "s3"}, None),
    "robustdarts-s4": (robustdarts, {"space": "s4"}, None),
    "robustdarts-drop-path": (robustdarts, {"space": "s2", "drop_path_prob": 0.3}, None),
    "pdarts-stage1": (pdarts, {"stage": 1, "p": 0.0}, {"P-DARTS search cell (chenxin061/pdarts)": 5,
                                                       "P-DARTS MixedOp (chenxin061/pdarts)": 70}),
    "pdarts-stage3": (pdarts, {"stage": 3, "p": 0.4}, None),
    "pcdarts": (pcdarts, {}, {"PC-DARTS search cell (yuhuixu1993/PC-DARTS)": 5,
                              "PC-DARTS MixedOp (yuhuixu1993/PC-DARTS)": 70}),
    "nas-bench-201": (autodl_nb201, {}, {"AutoDL-Projects NAS201SearchCell (NAS-Bench-201 space)": 6}),
    "autodl-darts": (autodl_darts, {"N": 2}, {"AutoDL-Projects NASNetSearchCell (DARTS space)": 6,
                                             "AutoDL-Projects MixedOp (DARTS space, NASNetSearchCell)": 84}),
    "naslib": (naslib, {}, {"NASLib DARTSMixedOp (automl/NASLib)": 70}),
    "nni": (nni, {}, {"NNI DartsLayerChoice (microsoft/nni, one-shot DARTS)": 70}),
}


SMALL = {"layers": 3, "N": 1}  # three cells: a normal one and both reduction cells (NAS-Bench-201: three search cells)


def _network(name, seed=0, small=False):
    module, kwargs, _ = PEERS[name]
    torch.manual_seed(seed)
    if small:
        depth = "N" if module in (autodl_nb201, autodl_darts) else "layers"
        kwargs = {**kwargs, depth: SMALL[depth]}
    net = module.build(**kwargs)
    with torch.no_grad():  # α away from uniform, so that every candidate's weight matters
        for alpha in module.alphas(net) + [p for n, p in net.named_parameters() if "alpha" in n or "arch" in n]:
            alpha.normal_()
    return net


def _alphas(net, name):
    return [a for a in PEERS[name][0].alphas(net) if not isinstance(a, nn.Parameter)]


def _step(net, name, x, y, seed):
    """[logits, d loss / d every parameter and α, every buffer after the step], the RNG seeded (dropout, noise,
    drop-path draw from it)."""
    torch.manual_seed(seed)
    logits = peer_networks.logits(net(x))
    grads = torch.autograd.grad(F.cross_entropy(logits, y), [*net.parameters(), *_alphas(net, name)],
                                allow_unused=True)
    return [logits.detach(), *grads, *(b.clone() for b in net.buffers())]


def _assert_equal(ours, theirs, labels, rtol):
    """Each tensor within rtol of the original's norm, or of the largest gradient's where the truth is 0 (a conv bias
    before a batch-statistics BN: rounding alone on both sides)."""
    scale = max(t.norm().item() for t in theirs if t is not None and t.is_floating_point())
    for a, b, label in zip(ours, theirs, labels):
        if a is None or b is None:
            assert a is None and b is None or (a if b is None else b).abs().max() == 0, label
            continue
        if not b.is_floating_point():
            assert torch.equal(a, b), label
            continue
        error = (a - b).norm().item()
        assert error <= rtol * (b.norm().item() + 1e-3 * scale), f"{label}: {error:.2e} of {b.norm().item():.2e}"


def _labels(net, name):
    return (["logits"] + [n for n, _ in net.named_parameters()] + [f"α {i}" for i in range(len(_alphas(net, name)))]
            + [n for n, _ in net.named_buffers()])


# eval mode (running statistics) on the peers whose BNs or candidates differ from DARTS' own
EVAL = {"darts", "pcdarts", "nas-bench-201", "autodl-darts", "pdarts-stage3"}


@pytest.mark.parametrize("mode", ["lean", "recompute"])
@pytest.mark.parametrize("name, training", [(name, training) for name in sorted(PEERS) for training in (True, False)
                                            if training or name in EVAL])
def test_fused_network_equals_the_original_in_float64(name, training, mode):
    original = peer_networks.double(_network(name, small=True))
    fused = copy.deepcopy(original)
    report = stacnas.nn.use_fused_mixed_ops(fused, mode, check=mode == "lean")  # the check: tested in lean only
    assert report.fused and not report.left
    x, y = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (4,))
    if not training:  # running statistics away from 0 and 1 first
        for net in (original, fused):
            _step(net, name, x, y, 0)
            net.eval()
    for seed in (1, 2):  # the second step sees the running statistics the first one updated
        _assert_equal(_step(fused, name, x, y, seed), _step(original, name, x, y, seed), _labels(original, name),
                      1e-12)


@pytest.mark.parametrize("name", sorted(PEERS))
def test_nothing_of_the_model_changes_but_the_arithmetic(name):
    original = _network(name)
    fused = copy.deepcopy(original)
    before = {n: type(m) for n, m in fused.named_modules()}
    saved = copy.deepcopy(original.state_dict())
    report = stacnas.nn.use_fused_mixed_ops(fused)
    if PEERS[name][2] is not None:  # every edge and cell of the codebase's structure, nothing else
        assert {s: list(report.fused.values()).count(s) for s in set(report.fused.values())} == PEERS[name][2]
    assert not report.left
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in original.named_parameters()]
    assert list(fused.state_dict()) == list(original.state_dict())
    for n, m in fused.named_modules():  # the same objects, each an instance of its own class, under its name
        assert isinstance(m, before[n]) and type(m).__name__ == before[n].__name__, n
    fused.load_state_dict(saved)  # a checkpoint of the original loads into the fused model, and the reverse
    original.load_state_dict(fused.state_dict())


def test_methods_and_attributes_stay():
    net = _network("pdarts-stage3")
    stacnas.nn.use_fused_mixed_ops(net)
    net.p = 0.25
    net.update_p()  # P-DARTS' own method, on fused MixedOps
    dropouts = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(d.p == 0.25 for d in dropouts)
    edge = net.cells[0].cell_ops[0]
    assert edge.p == 0.25 and isinstance(edge.m_ops, nn.ModuleList)
    pc = _network("pcdarts")
    stacnas.nn.use_fused_mixed_ops(pc)
    assert pc.cells[0]._ops[0].k == 4 and isinstance(pc.cells[0]._ops[0].mp, nn.MaxPool2d)


def test_sampling_forwards_are_left_as_they_are():
    """GDAS' forwards compute one candidate per edge: the fused modules run them as the original does."""
    nb201 = _network("nas-bench-201")
    fused = copy.deepcopy(nb201)
    report = stacnas.nn.use_fused_mixed_ops(fused)
    assert "forward_gdas" in report.notes["AutoDL-Projects NAS201SearchCell (NAS-Bench-201 space)"]
    cell, original_cell = fused.cells[0], nb201.cells[0]
    x = torch.randn(2, 8, 8, 8)
    hardwts = F.one_hot(torch.arange(6) % 5, 5).float()
    index = torch.arange(6) % 5
    torch.testing.assert_close(cell.forward_gdas(x, hardwts, index), original_cell.forward_gdas(x, hardwts, index),
                               rtol=0, atol=0)
    nasnet = _network("autodl-darts")
    fused_nasnet = copy.deepcopy(nasnet)
    stacnas.nn.use_fused_mixed_ops(fused_nasnet)
    s = torch.randn(2, 24, 8, 8)
    weights, index = torch.softmax(torch.randn(14, 8), -1), torch.arange(14) % 8
    torch.testing.assert_close(fused_nasnet.cells[0].forward_gdas(s, s, weights, index),
                               nasnet.cells[0].forward_gdas(s, s, weights, index), rtol=0, atol=0)


def test_robustdarts_drop_path_runs_the_cells_own_forward_over_fused_edges():
    report = stacnas.nn.use_fused_mixed_ops(_network("robustdarts-drop-path"))
    assert "drop_prob > 0" in report.notes["DARTS search cell (quark0/darts, RobustDARTS)"]


def test_copies_replicas_and_pickles():
    net = _network("darts")
    fused = copy.deepcopy(net)
    stacnas.nn.use_fused_mixed_ops(fused, "recompute")
    x = torch.randn(2, 3, 16, 16)
    twin = copy.deepcopy(fused)  # a deep copy stays fused, in its mode
    assert type(twin.cells[0]) is type(fused.cells[0]) and twin.cells[0]._stacnas_dropin.fusion.mode == "recompute"
    replica = fused.cells[0]._replicate_for_data_parallel()  # what DataParallel makes per GPU
    assert type(replica) is type(fused.cells[0])
    s = torch.randn(2, 24, 16, 16)
    weights = torch.softmax(net.alphas_normal, -1).detach()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(replica(s, s, weights), net.cells[0](s, s, weights), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(nn.DataParallel(fused)(x), net(x), rtol=1e-5, atol=1e-6)
    buffer = io.BytesIO()
    torch.save(fused, buffer)  # pickled as the user's own classes, unfused
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded.cells[0]) is darts.Cell and type(loaded.cells[0]._ops[0]) is darts.MixedOp
    assert not hasattr(loaded.cells[0], "_stacnas_dropin")
    assert type(pickle.loads(pickle.dumps(fused.cells[0]._ops[0]))) is darts.MixedOp


def test_double_and_reference_mode_after_the_call():
    net = _network("pcdarts")
    fused = copy.deepcopy(net)
    stacnas.nn.use_fused_mixed_ops(fused)
    fused, net = peer_networks.double(fused), peer_networks.double(net)  # .double() of a fused model
    x, y = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (2,))
    _assert_equal(_step(fused, "pcdarts", x, y, 0), _step(net, "pcdarts", x, y, 0), _labels(net, "pcdarts"), 1e-12)
    report = stacnas.nn.use_fused_mixed_ops(fused, "reference")  # every module gets its own methods back
    assert not report.fused and all(type(m) is type(n) for m, n in zip(fused.modules(), net.modules()))


# ---- what is not fused, and why -----------------------------------------------------------------------------------

class MixedLayer(nn.Module):
    """A mixed edge of a layout stacnas does not know."""

    def __init__(self, C):
        super().__init__()
        self.layers = nn.ModuleList([nn.Conv2d(C, C, 3, padding=1), nn.Identity()])

    def forward(self, x, weights):
        return sum(w * layer(x) for w, layer in zip(weights, self.layers))


def test_an_unknown_structure_is_left_and_named():
    model = nn.Sequential(MixedLayer(4))
    with pytest.warns(UserWarning, match="fused nothing in Sequential: 0: MixedLayer is not a structure"):
        report = stacnas.nn.use_fused_mixed_ops(model)
    assert not report.fused and "MixedLayer" in report.left["0"] and type(model[0]) is MixedLayer


class MixedOp(nn.Module):
    """Built like DARTS' MixedOp, but its forward adds a residual: something nobody here has seen."""

    def __init__(self, C):
        super().__init__()
        self._ops = nn.ModuleList(stacnas.ops.search_op(p, C, 1) for p in ("skip_connect", "sep_conv_3x3"))

    def forward(self, x, weights):
        return x + sum(w * op(x) for w, op in zip(weights, self._ops))


def test_the_first_use_check_gives_a_different_forward_back():
    torch.manual_seed(0)
    edge = MixedOp(4)
    fused = copy.deepcopy(edge)
    stacnas.nn.use_fused_mixed_ops(fused)
    x, w = torch.randn(2, 4, 6, 6), torch.softmax(torch.randn(2), 0)
    with pytest.warns(UserWarning, match=r"fused forward of \(the model\) .* differs from the original in output 0"):
        out = fused(x, w)
    torch.testing.assert_close(out, edge(x, w), rtol=0, atol=0)
    assert type(fused) is MixedOp and not hasattr(fused, "_stacnas_dropin")
    unchecked = copy.deepcopy(edge)
    stacnas.nn.use_fused_mixed_ops(unchecked, check=False)  # what the check guards against
    assert not torch.allclose(unchecked(x, w), edge(x, w))


class NoisyOp(nn.Module):
    """A user's own candidate that draws random numbers."""

    def forward(self, x):
        return x + 0.1 * torch.randn_like(x)


class NoisyMixedOp(nn.Module):
    def __init__(self, C):
        super().__init__()
        self._ops = nn.ModuleList([NoisyOp(), stacnas.ops.search_op("sep_conv_3x3", C, 1), nn.Dropout(0.5)])

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


NoisyMixedOp.__name__ = NoisyMixedOp.__qualname__ = "MixedOp"


@pytest.mark.parametrize("device", DEVICES)
def test_recompute_replays_every_candidates_random_numbers(device):
    torch.manual_seed(0)
    edge = NoisyMixedOp(4).double().to(device)
    fused = copy.deepcopy(edge)
    stacnas.nn.use_fused_mixed_ops(fused, "recompute")
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.softmax(torch.randn(3, dtype=torch.float64, device=device), 0).requires_grad_()
    results = []
    for model in (fused, edge):
        torch.manual_seed(3)
        out = model(x, w)
        results.append([out, *torch.autograd.grad(out.pow(2).sum(), [x, w, *model.parameters()])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the first-use check passed too
        _assert_equal(results[0], results[1], [f"tensor {i}" for i in range(len(results[1]))], 1e-12)


@pytest.mark.parametrize("mode", ["lean", "recompute"])
@pytest.mark.parametrize("name", ["pdarts-stage3", "pcdarts", "nas-bench-201"])
@pytest.mark.parametrize("device", DEVICES)
def test_fused_network_on_each_device(device, name, mode):
    """In float64 on the device (the CUDA kernels and RNG where a GPU is), one training step."""
    original = peer_networks.to(_network(name, small=True), device=device, dtype=torch.float64)
    fused = copy.deepcopy(original)
    stacnas.nn.use_fused_mixed_ops(fused, mode)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64, device=device)
    y = torch.randint(0, 10, (4,), device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_equal(_step(fused, name, x, y, 1), _step(original, name, x, y, 1), _labels(original, name), 1e-12)


# ---- stacnas' own modules ------------------------------------------------------------------------------------------

def test_darts_state_dict_loads_into_supernet():
    torch.manual_seed(1)
    net = darts.Network(C=4, num_classes=5, layers=5)
    ours = Supernet(BUILTIN_SPACES["darts"], C=4, layers=5, num_classes=5)
    missing, unexpected = ours.load_state_dict(net.state_dict(), strict=False)
    assert sorted(missing) == ["alpha_normal", "alpha_reduce"] and not unexpected
    with torch.no_grad():
        ours.alpha_normal.copy_(net.alphas_normal)
        ours.alpha_reduce.copy_(net.alphas_reduce)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(ours(x), net(x), rtol=1e-5, atol=1e-5)


def test_dropin_mixed_op_signature():
    op = stacnas.nn.MixedOp(6, 1)
    assert op.mode == "lean" and len(op._ops) == len(PRIMITIVES)
    reference = copy.deepcopy(op).set_mode("reference")
    x, w = torch.randn(2, 6, 8, 8), F.softmax(torch.randn(len(PRIMITIVES)), dim=0)
    torch.testing.assert_close(op(x, w), reference(x, w), rtol=1e-5, atol=1e-6)
    model = nn.Sequential(Supernet(BUILTIN_SPACES["s2"], C=4, layers=3))
    report = stacnas.nn.use_fused_mixed_ops(model, "recompute")
    assert report.fused == {"0": "stacnas Supernet"} and model[0].mode == "recompute"
