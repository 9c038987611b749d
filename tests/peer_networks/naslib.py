"""NASLib's DARTS mixed op (automl/NASLib search_spaces/core/primitives.py, optimizers/oneshot/darts): primitives that
take the edge's data as a second argument (registered as 'primitive-<i>'), DARTSMixedOp reading α from the edge
data and mixing in apply_weights. NASLib's graph is replaced here by a DARTS-like cell that calls each edge with its
edge data, as NASLib's graph does."""
from abc import ABCMeta, abstractmethod

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import darts_ops


class AbstractPrimitive(nn.Module, metaclass=ABCMeta):
    @abstractmethod
    def forward(self, x, edge_data):
        raise NotImplementedError

    def get_embedded_ops(self):
        return None


class Identity(AbstractPrimitive):
    def forward(self, x, edge_data=None):
        return x


class Zero(AbstractPrimitive):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x, edge_data=None):
        return x.mul(0.0) if self.stride == 1 else x[:, :, ::self.stride, ::self.stride].mul(0.0)


class SepConv(AbstractPrimitive):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = darts_ops.SepConv(C_in, C_out, kernel_size, stride, padding, affine).op

    def forward(self, x, edge_data):
        return self.op(x)


class DilConv(AbstractPrimitive):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__()
        self.op = darts_ops.DilConv(C_in, C_out, kernel_size, stride, padding, dilation, affine).op

    def forward(self, x, edge_data):
        return self.op(x)


class MaxPool(AbstractPrimitive):
    def __init__(self, C_in, kernel_size, stride, use_bn=True):
        super().__init__()
        pool = nn.MaxPool2d(kernel_size, stride=stride, padding=1)
        self.maxpool = nn.Sequential(pool, nn.BatchNorm2d(C_in, affine=False)) if use_bn else pool

    def forward(self, x, edge_data):
        return self.maxpool(x)


class AvgPool(AbstractPrimitive):
    def __init__(self, C_in, kernel_size, stride, use_bn=True):
        super().__init__()
        pool = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        self.avgpool = nn.Sequential(pool, nn.BatchNorm2d(C_in, affine=False)) if use_bn else pool

    def forward(self, x, edge_data):
        return self.avgpool(x)


class FactorizedReduce(AbstractPrimitive):
    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        reduce = darts_ops.FactorizedReduce(C_in, C_out, affine)
        self.relu, self.conv_1, self.conv_2, self.bn = reduce.relu, reduce.conv_1, reduce.conv_2, reduce.bn

    def forward(self, x, edge_data):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


class MixedOp(AbstractPrimitive):
    def __init__(self, primitives):
        super().__init__()
        self.primitives = primitives
        for i, primitive in enumerate(primitives):
            self.add_module(f"primitive-{i}", primitive)
        self.pre_process_hook = self.post_process_hook = None

    def forward(self, x, edge_data):
        weights = self.process_weights(self.get_weights(edge_data))
        return self.apply_weights(x, weights)

    def get_embedded_ops(self):
        return self.primitives


class DARTSMixedOp(MixedOp):
    def get_weights(self, edge_data):
        return edge_data.alpha

    def process_weights(self, weights):
        return torch.softmax(weights, dim=-1)

    def apply_weights(self, x, weights):
        return sum(w * op(x, None) for w, op in zip(weights, self.primitives))


def primitives(C, stride):
    return [Zero(stride), MaxPool(C, 3, stride), AvgPool(C, 3, stride),
            Identity() if stride == 1 else FactorizedReduce(C, C, affine=False),
            SepConv(C, C, 3, stride, 1, affine=False), SepConv(C, C, 5, stride, 2, affine=False),
            DilConv(C, C, 3, stride, 2, 2, affine=False), DilConv(C, C, 5, stride, 4, 2, affine=False)]


class EdgeData:
    def __init__(self, alpha):
        self.alpha = alpha


class Cell(nn.Module):
    """One DARTS cell of NASLib's graph: node i sums its edges, each called as edge(h, edge_data)."""

    def __init__(self, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = darts_ops.FactorizedReduce(C_prev_prev, C, False) if reduction_prev else \
            darts_ops.ReLUConvBN(C_prev_prev, C, 1, 1, 0, False)
        self.preprocess1 = darts_ops.ReLUConvBN(C_prev, C, 1, 1, 0, False)
        self.edges = nn.ModuleList(DARTSMixedOp(primitives(C, 2 if reduction and j < 2 else 1))
                                   for i in range(4) for j in range(2 + i))

    def forward(self, s0, s1, alphas):
        states, e = [self.preprocess0(s0), self.preprocess1(s1)], 0
        for _ in range(4):
            s = 0
            for h in list(states):
                s = s + self.edges[e](h, EdgeData(alphas[e]))
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
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(14, 8))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(14, 8))

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, self.alpha_reduce if cell.reduction else self.alpha_normal)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))


def build(C=8, num_classes=10, layers=5):
    return Network(C, num_classes, layers)


def alphas(net):
    return [net.alpha_normal, net.alpha_reduce]
