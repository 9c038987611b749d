"""AutoDL-Projects' NAS-Bench-201 search cell (xautodl/models/cell_searchs/search_cells.py, NAS201SearchCell) in a
DARTS-V1-style network (search_model_darts.py): no MixedOp class; the cell's forward sums `layer(x) * w` over the
ModuleList of every edge 'i<-j'. GDAS' and the sampling forwards pick one candidate per edge."""
import random

import torch
import torch.nn as nn

from .autodl_ops import NAS_BENCH_201, OPS, ReLUConvBN


class NAS201SearchCell(nn.Module):
    def __init__(self, C_in, C_out, stride, max_nodes, op_names, affine=False, track_running_stats=True):
        super().__init__()
        self.op_names = list(op_names)
        self.edges = nn.ModuleDict()
        self.max_nodes, self.in_dim, self.out_dim = max_nodes, C_in, C_out
        for i in range(1, max_nodes):
            for j in range(i):
                self.edges[f"{i}<-{j}"] = nn.ModuleList(
                    OPS[name](C_in if j == 0 else C_out, C_out, stride if j == 0 else 1, affine, track_running_stats)
                    for name in op_names)
        self.edge_keys = sorted(self.edges.keys())
        self.edge2index = {key: i for i, key in enumerate(self.edge_keys)}
        self.num_edges = len(self.edges)

    def forward(self, inputs, weightss):
        nodes = [inputs]
        for i in range(1, self.max_nodes):
            inter = []
            for j in range(i):
                key = f"{i}<-{j}"
                weights = weightss[self.edge2index[key]]
                inter.append(sum(layer(nodes[j]) * w for layer, w in zip(self.edges[key], weights)))
            nodes.append(sum(inter))
        return nodes[-1]

    def forward_gdas(self, inputs, hardwts, index):
        nodes = [inputs]
        for i in range(1, self.max_nodes):
            inter = []
            for j in range(i):
                key = f"{i}<-{j}"
                weights, chosen = hardwts[self.edge2index[key]], index[self.edge2index[key]].item()
                inter.append(sum(weights[k] * op(nodes[j]) if k == chosen else weights[k]
                                 for k, op in enumerate(self.edges[key])))
            nodes.append(sum(inter))
        return nodes[-1]

    def forward_joint(self, inputs, weightss):
        nodes = [inputs]
        for i in range(1, self.max_nodes):
            inter = []
            for j in range(i):
                key = f"{i}<-{j}"
                inter.append(sum(layer(nodes[j]) * w for layer, w in zip(self.edges[key],
                                                                         weightss[self.edge2index[key]])))
            nodes.append(sum(inter))
        return nodes[-1]

    def forward_urs(self, inputs):
        nodes = [inputs]
        for i in range(1, self.max_nodes):
            nodes.append(sum(random.choice(self.edges[f"{i}<-{j}"])(nodes[j]) for j in range(i)))
        return nodes[-1]

    def forward_select(self, inputs, weightss):
        nodes = [inputs]
        for i in range(1, self.max_nodes):
            nodes.append(sum(self.edges[f"{i}<-{j}"][weightss[self.edge2index[f"{i}<-{j}"]].argmax().item()](nodes[j])
                             for j in range(i)))
        return nodes[-1]


class ResNetBasicblock(nn.Module):
    """The reduction block between NAS-Bench-201's stages: two ReLU-conv-BN and an avg-pool shortcut."""

    def __init__(self, inplanes, planes, stride, affine=True):
        super().__init__()
        self.conv_a = ReLUConvBN(inplanes, planes, 3, stride, 1, 1, affine)
        self.conv_b = ReLUConvBN(planes, planes, 3, 1, 1, 1, affine)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(inplanes, planes, 1, bias=False))

    def forward(self, inputs):
        return self.downsample(inputs) + self.conv_b(self.conv_a(inputs))


class TinyNetworkDarts(nn.Module):
    def __init__(self, C, N, max_nodes, num_classes, search_space, affine=False, track_running_stats=True):
        super().__init__()
        self._C, self._layerN, self.max_nodes = C, N, max_nodes
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        channels = [C] * N + [C * 2] + [C * 2] * N + [C * 4] + [C * 4] * N
        reductions = [False] * N + [True] + [False] * N + [True] + [False] * N
        C_prev, num_edge = C, None
        self.cells = nn.ModuleList()
        for C_curr, reduction in zip(channels, reductions):
            if reduction:
                cell = ResNetBasicblock(C_prev, C_curr, 2)
            else:
                cell = NAS201SearchCell(C_prev, C_curr, 1, max_nodes, search_space, affine, track_running_stats)
                num_edge = cell.num_edges
            self.cells.append(cell)
            C_prev = C_curr
        self.op_names = list(search_space)
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self.arch_parameters = nn.Parameter(1e-3 * torch.randn(num_edge, len(search_space)))

    def get_alphas(self):
        return [self.arch_parameters]

    def forward(self, inputs):
        alphas = nn.functional.softmax(self.arch_parameters, dim=-1)
        feature = self.stem(inputs)
        for cell in self.cells:
            feature = cell(feature, alphas) if isinstance(cell, NAS201SearchCell) else cell(feature)
        out = self.global_pooling(self.lastact(feature)).flatten(1)
        return out, self.classifier(out)


def build(C=8, N=2, num_classes=10, track_running_stats=True):
    return TinyNetworkDarts(C, N, 4, num_classes, NAS_BENCH_201, track_running_stats=track_running_stats)


def alphas(net):
    return net.get_alphas()
