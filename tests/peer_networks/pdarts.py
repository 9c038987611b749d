"""P-DARTS' search network (chenxin061/pdarts model_search.py): each MixedOp builds only the primitives its switch
turns on (in `m_ops`), skip_connect followed by Dropout(p) when p > 0, update_p() resetting the rate; α are
nn.Parameters of the network."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .darts_ops import OPS, PRIMITIVES, FactorizedReduce, Identity, ReLUConvBN, Stem, reductions


class Zero(nn.Module):
    """P-DARTS' own none: a fresh tensor of zeros (of the strided shape)."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        n, c, h, w = x.size()
        return torch.zeros(n, c, h // self.stride, w // self.stride, dtype=torch.float32, device=x.device)


def op_of(primitive, C, stride):
    return Zero(stride) if primitive == "none" else OPS[primitive](C, stride, False)


class MixedOp(nn.Module):
    def __init__(self, C, stride, switch, p):
        super().__init__()
        self.m_ops = nn.ModuleList()
        self.p = p
        for i, on in enumerate(switch):
            if on:
                primitive = PRIMITIVES[i]
                op = op_of(primitive, C, stride)
                if "pool" in primitive:
                    op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
                if isinstance(op, Identity) and p > 0:
                    op = nn.Sequential(op, nn.Dropout(self.p))
                self.m_ops.append(op)

    def update_p(self):
        for op in self.m_ops:
            if isinstance(op, nn.Sequential) and isinstance(op[0], Identity):
                op[1].p = self.p

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self.m_ops))


class Cell(nn.Module):
    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, switches, p):
        super().__init__()
        self.reduction, self.p = reduction, p
        self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False) if reduction_prev else \
            ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps, self._multiplier = steps, multiplier
        self.cell_ops = nn.ModuleList()
        edge = 0
        for i in range(steps):
            for j in range(2 + i):
                self.cell_ops.append(MixedOp(C, 2 if reduction and j < 2 else 1, switches[edge], self.p))
                edge += 1

    def update_p(self):
        for op in self.cell_ops:
            op.p = self.p
            op.update_p()

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            s = sum(self.cell_ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


class Network(nn.Module):
    def __init__(self, C, num_classes, layers, criterion, steps=4, multiplier=4, stem_multiplier=3,
                 switches_normal=(), switches_reduce=(), p=0.0):
        super().__init__()
        self._C, self._num_classes, self._layers, self._criterion = C, num_classes, layers, criterion
        self._steps, self._multiplier, self.p = steps, multiplier, p
        self.switch_on = sum(1 for on in switches_normal[0] if on)
        C_curr = stem_multiplier * C
        self.stem = Stem(C_curr)
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in reductions(layers)
            if reduction:
                C_curr *= 2
            switches = switches_reduce if reduction else switches_normal
            self.cells.append(Cell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev,
                                   switches, self.p))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        edges = sum(2 + i for i in range(steps))
        self.alphas_normal = nn.Parameter(torch.FloatTensor(1e-3 * np.random.randn(edges, self.switch_on)))
        self.alphas_reduce = nn.Parameter(torch.FloatTensor(1e-3 * np.random.randn(edges, self.switch_on)))

    def arch_parameters(self):
        return [self.alphas_normal, self.alphas_reduce]

    def update_p(self):
        for cell in self.cells:
            cell.p = self.p
            cell.update_p()

    def forward(self, input):
        s0 = s1 = self.stem(input)
        for cell in self.cells:
            alphas = self.alphas_reduce if cell.reduction else self.alphas_normal
            weights = F.softmax(alphas, dim=0 if alphas.size(1) == 1 else -1)
            s0, s1 = s1, cell(s0, s1, weights)
        return self.classifier(self.global_pooling(s1).flatten(1))


def switches(stage, seed=0):
    """Per edge, the primitives on in P-DARTS' stage 1 (all 8), 2 (5 of them) or 3 (3): a seeded choice that keeps
    skip_connect on, as P-DARTS' own stages would with different α."""
    keep = {1: 8, 2: 5, 3: 3}[stage]
    rng = np.random.RandomState(seed)
    found = []
    for _ in range(14):
        on = [3] + sorted(rng.choice([i for i in range(8) if i != 3], keep - 1, replace=False).tolist())
        found.append([i in on for i in range(8)])
    return found


def build(stage=2, C=8, num_classes=10, layers=5, p=0.1, seed=0):
    np.random.seed(seed)
    return Network(C, num_classes, layers, None, switches_normal=switches(stage, seed),
                   switches_reduce=switches(stage, seed + 1), p=p)


def alphas(net):
    return net.arch_parameters()
