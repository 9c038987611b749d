"""RobustDARTS' search network (automl/RobustDARTS src/search/model_search.py): a primitive list per edge (spaces
S1–S4), `noise` among them, and drop-path on each edge's output when Cell.forward gets drop_prob > 0 in training."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .darts_ops import FactorizedReduce, ReLUConvBN, Stem, reductions, search_op


class NoiseOp(nn.Module):
    def __init__(self, stride, mean, std):
        super().__init__()
        self.stride, self.mean, self.std = stride, mean, std

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride] if self.stride != 1 else x
        return x.new(x.size()).normal_(self.mean, self.std)


def op_of(primitive, C, stride):
    return NoiseOp(stride, 0., 1.) if primitive == "noise" else search_op(primitive, C, stride)


def drop_path(x, drop_prob):
    keep = 1. - drop_prob
    mask = x.new_empty(x.size(0), 1, 1, 1).bernoulli_(keep)
    return x.div(keep).mul(mask)


class MixedOp(nn.Module):
    def __init__(self, C, stride, PRIMITIVES):
        super().__init__()
        self._ops = nn.ModuleList(op_of(p, C, stride) for p in PRIMITIVES)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class Cell(nn.Module):
    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, primitives):
        super().__init__()
        self.reduction = reduction
        self.primitives = primitives["primitives_reduct" if reduction else "primitives_normal"]
        self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False) if reduction_prev else \
            ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps, self._multiplier = steps, multiplier
        self._ops = nn.ModuleList()
        edge = 0
        for i in range(steps):
            for j in range(2 + i):
                self._ops.append(MixedOp(C, 2 if reduction and j < 2 else 1, self.primitives[edge]))
                edge += 1

    def forward(self, s0, s1, weights, drop_prob=0.):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            if drop_prob > 0. and self.training:
                s = sum(drop_path(self._ops[offset + j](h, weights[offset + j]), drop_prob)
                        for j, h in enumerate(states))
            else:
                s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


class Network(nn.Module):
    def __init__(self, C, num_classes, layers, criterion, primitives, steps=4, multiplier=4, stem_multiplier=3,
                 drop_path_prob=0.0):
        super().__init__()
        self._C, self._num_classes, self._layers, self._criterion = C, num_classes, layers, criterion
        self._steps, self._multiplier, self.drop_path_prob = steps, multiplier, drop_path_prob
        self.PRIMITIVES = primitives
        C_curr = stem_multiplier * C
        self.stem = Stem(C_curr)
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in reductions(layers)
            if reduction:
                C_curr *= 2
            self.cells.append(Cell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev,
                                   primitives))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        edges = sum(2 + i for i in range(steps))
        width = len(primitives["primitives_normal"][0])
        self.alphas_normal = (1e-3 * torch.randn(edges, width)).requires_grad_()
        self.alphas_reduce = (1e-3 * torch.randn(edges, width)).requires_grad_()

    def arch_parameters(self):
        return [self.alphas_normal, self.alphas_reduce]

    def forward(self, input, discrete=False):
        s0 = s1 = self.stem(input)
        for cell in self.cells:
            alphas = self.alphas_reduce if cell.reduction else self.alphas_normal
            weights = alphas if discrete else F.softmax(alphas, dim=-1)
            s0, s1 = s1, cell(s0, s1, weights, self.drop_path_prob)
        return self.classifier(self.global_pooling(s1).flatten(1))


def primitives_of(space):
    """RobustDARTS' primitives dict for a stacnas space (S1–S4 give every edge the same number of candidates)."""
    from stacnas.spaces import BUILTIN_SPACES
    s = BUILTIN_SPACES[space]
    return {"primitives_normal": [list(ops) for ops in s.edge_ops("normal", 4)],
            "primitives_reduct": [list(ops) for ops in s.edge_ops("reduce", 4)]}


def build(space="s1", C=8, num_classes=10, layers=5, drop_path_prob=0.0):
    return Network(C, num_classes, layers, None, primitives_of(space), drop_path_prob=drop_path_prob)


def alphas(net):
    return net.arch_parameters()
