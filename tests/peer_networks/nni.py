"""NNI's one-shot DARTS layer (microsoft/nni, DartsLayerChoice): the candidates in a ModuleDict, α a parameter inside
the layer, forward(*args) stacking every candidate's output and summing it weighted by softmax(α). The network is a
DARTS-like cell network whose every edge is such a layer."""
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import darts_ops


class DartsLayerChoice(nn.Module):
    def __init__(self, candidates):
        super().__init__()
        self.op_choices = nn.ModuleDict(OrderedDict(candidates))
        self.alpha = nn.Parameter(torch.randn(len(self.op_choices)) * 1e-3)

    def forward(self, *args, **kwargs):
        results = torch.stack([op(*args, **kwargs) for op in self.op_choices.values()])
        shape = [-1] + [1] * (results.dim() - 1)
        return torch.sum(results * F.softmax(self.alpha, -1).view(*shape), 0)


class Cell(nn.Module):
    def __init__(self, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        self.preprocess0 = darts_ops.FactorizedReduce(C_prev_prev, C, False) if reduction_prev else \
            darts_ops.ReLUConvBN(C_prev_prev, C, 1, 1, 0, False)
        self.preprocess1 = darts_ops.ReLUConvBN(C_prev, C, 1, 1, 0, False)
        self.edges = nn.ModuleList(
            DartsLayerChoice((p, darts_ops.search_op(p, C, 2 if reduction and j < 2 else 1))
                             for p in darts_ops.PRIMITIVES if p != "none")
            for i in range(4) for j in range(2 + i))

    def forward(self, s0, s1):
        states, e = [self.preprocess0(s0), self.preprocess1(s1)], 0
        for _ in range(4):
            s = 0
            for h in list(states):
                s = s + self.edges[e](h)
                e += 1
            states.append(s)
        return torch.cat(states[-4:], dim=1)


class Network(nn.Module):
    def __init__(self, C, num_classes, layers):
        super().__init__()
        C_curr = 3 * C
        self.stem = darts_ops.Stem(C_curr)
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in darts_ops.reductions(layers)
            if reduction:
                C_curr *= 2
            self.cells.append(Cell(C_prev_prev, C_prev, C_curr, reduction, reduction_prev))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, 4 * C_curr
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))


def build(C=8, num_classes=10, layers=5):
    return Network(C, num_classes, layers)


def alphas(net):
    return []  # inside the layers: among the parameters
