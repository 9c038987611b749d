"""stacnas.nn as a drop-in for DARTS-like code: a DARTS-structured search network written here the way DARTS writes
it (its own op classes, naive sum(w * op(x)) mixed ops, α outside the module), swapped to the fused MixedOp,
gives the same outputs and every gradient; its state_dict loads into stacnas' Supernet."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import stacnas.nn
from stacnas.nn import Supernet
from stacnas.ops import PRIMITIVES
from stacnas.spaces import BUILTIN_SPACES

# ---- a DARTS-style search network, written as DARTS writes it -------------------------------------------------

class ReLUConvBN(nn.Module):
    def __init__(self, C_in, C_out, k, stride, pad, affine):
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(C_in, C_out, k, stride, pad, bias=False),
                                nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    def __init__(self, C, k, stride, pad, dilation, affine):
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(inplace=False),
                                nn.Conv2d(C, C, k, stride, pad, dilation=dilation, groups=C, bias=False),
                                nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C, affine=affine))

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    def __init__(self, C, k, stride, pad, affine):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False), nn.Conv2d(C, C, k, stride, pad, groups=C, bias=False),
            nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C, affine=affine), nn.ReLU(inplace=False),
            nn.Conv2d(C, C, k, 1, pad, groups=C, bias=False), nn.Conv2d(C, C, 1, bias=False),
            nn.BatchNorm2d(C, affine=affine))

    def forward(self, x):
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x.mul(0.) if self.stride == 1 else x[:, :, ::self.stride, ::self.stride].mul(0.)


class FactorizedReduce(nn.Module):
    def __init__(self, C_in, C_out, affine):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


OPS = {
    "none": lambda C, s: Zero(s),
    "avg_pool_3x3": lambda C, s: nn.AvgPool2d(3, stride=s, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, s: nn.MaxPool2d(3, stride=s, padding=1),
    "skip_connect": lambda C, s: Identity() if s == 1 else FactorizedReduce(C, C, False),
    "sep_conv_3x3": lambda C, s: SepConv(C, 3, s, 1, False),
    "sep_conv_5x5": lambda C, s: SepConv(C, 5, s, 2, False),
    "dil_conv_3x3": lambda C, s: DilConv(C, 3, s, 2, 2, False),
    "dil_conv_5x5": lambda C, s: DilConv(C, 5, s, 4, 2, False),
}


class MixedOp(nn.Module):
    def __init__(self, C, stride):
        super().__init__()
        self._ops = nn.ModuleList()
        for primitive in PRIMITIVES:
            op = OPS[primitive](C, stride)
            if "pool" in primitive:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self._ops.append(op)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class Cell(nn.Module):
    def __init__(self, C_pp, C_p, C, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = FactorizedReduce(C_pp, C, False) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0, False)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, False)
        self._ops = nn.ModuleList()
        for i in range(4):
            for j in range(2 + i):
                self._ops.append(MixedOp(C, 2 if reduction and j < 2 else 1))

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(4):
            s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-4:], dim=1)


class Network(nn.Module):
    def __init__(self, C, num_classes, layers):
        super().__init__()
        C_curr = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in [layers // 3, 2 * layers // 3]
            if reduction:
                C_curr *= 2
            self.cells.append(Cell(C_pp, C_p, C_curr, reduction, reduction_prev))
            reduction_prev = reduction
            C_pp, C_p = C_p, 4 * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)
        self.alphas_normal = (1e-3 * torch.randn(14, 8)).requires_grad_()
        self.alphas_reduce = (1e-3 * torch.randn(14, 8)).requires_grad_()

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            alphas = self.alphas_reduce if cell.reduction else self.alphas_normal
            s0, s1 = s1, cell(s0, s1, F.softmax(alphas, dim=-1))
        return self.classifier(self.global_pooling(s1).flatten(1))


# ---- the tests -----------------------------------------------------------------------------------------------

def _step(model, x, y):
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, [*model.parameters(), model.alphas_normal, model.alphas_reduce])
    return loss.detach(), grads


@pytest.mark.parametrize("mode", ["lean", "recompute"])
def test_swapped_model_gives_the_same_outputs_and_gradients(mode):
    torch.manual_seed(0)
    darts = Network(C=4, num_classes=5, layers=5)
    with torch.no_grad():
        darts.alphas_normal.normal_()
        darts.alphas_reduce.normal_()
    fused = copy.deepcopy(darts)
    assert stacnas.nn.use_fused_mixed_ops(fused, mode) == 5 * 14
    assert all(isinstance(m, stacnas.nn.MixedOp) for cell in fused.cells for m in cell._ops)
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in darts.named_parameters()]
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    loss_ref, grads_ref = _step(darts, x, y)
    loss, grads = _step(fused, x, y)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    for g, g_ref in zip(grads, grads_ref):
        assert (g - g_ref).abs().max() <= 2e-5 * g_ref.abs().max() + 1e-7
    for b, b_ref in zip(fused.buffers(), darts.buffers()):
        torch.testing.assert_close(b, b_ref, rtol=1e-5, atol=1e-6)


def test_darts_state_dict_loads_into_supernet():
    torch.manual_seed(1)
    darts = Network(C=4, num_classes=5, layers=5)
    ours = Supernet(BUILTIN_SPACES["darts"], C=4, layers=5, num_classes=5)
    missing, unexpected = ours.load_state_dict(darts.state_dict(), strict=False)
    assert sorted(missing) == ["alpha_normal", "alpha_reduce"] and not unexpected
    with torch.no_grad():
        ours.alpha_normal.copy_(darts.alphas_normal)
        ours.alpha_reduce.copy_(darts.alphas_reduce)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(ours(x), darts(x), rtol=1e-5, atol=1e-5)


def test_dropin_mixed_op_signature():
    op = stacnas.nn.MixedOp(6, 1)
    assert op.mode == "lean" and len(op._ops) == len(PRIMITIVES)
    reference = copy.deepcopy(op).set_mode("reference")
    x, w = torch.randn(2, 6, 8, 8), F.softmax(torch.randn(len(PRIMITIVES)), dim=0)
    torch.testing.assert_close(op(x, w), reference(x, w), rtol=1e-5, atol=1e-6)
