"""AutoDL-Projects' DARTS-space search network (xautodl search_model_darts_nasnet.py, NASNetSearchCell and
MixedOp in search_cells.py): MixedOp has forward_darts and forward_gdas and no forward; edges in a ModuleDict keyed
'i<-j'; α nn.Parameters of the network; forward returns (features, logits)."""
import torch
import torch.nn as nn

from .autodl_ops import DARTS_SPACE, OPS


class MixedOp(nn.Module):
    def __init__(self, space, C, stride, affine, track_running_stats):
        super().__init__()
        self._ops = nn.ModuleList(OPS[p](C, C, stride, affine, track_running_stats) for p in space)

    def forward_gdas(self, x, weights, index):
        return self._ops[index](x) * weights[index]

    def forward_darts(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class NASNetSearchCell(nn.Module):
    def __init__(self, space, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, affine,
                 track_running_stats):
        super().__init__()
        self.reduction = reduction
        self.op_names = list(space)
        self.preprocess0 = OPS["skip_connect"](C_prev_prev, C, 2, affine, track_running_stats) if reduction_prev \
            else OPS["nor_conv_1x1"](C_prev_prev, C, 1, affine, track_running_stats)
        self.preprocess1 = OPS["nor_conv_1x1"](C_prev, C, 1, affine, track_running_stats)
        self._steps, self._multiplier = steps, multiplier
        self._ops = nn.ModuleList()
        self.edges = nn.ModuleDict()
        for i in range(steps):
            for j in range(2 + i):
                self.edges[f"{i}<-{j}"] = MixedOp(space, C, 2 if reduction and j < 2 else 1, affine,
                                                  track_running_stats)
        self.edge_keys = sorted(self.edges.keys())
        self.edge2index = {key: i for i, key in enumerate(self.edge_keys)}
        self.num_edges = len(self.edges)

    def forward_gdas(self, s0, s1, weightss, indexs):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            states.append(sum(self.edges[f"{i}<-{j}"].forward_gdas(h, weightss[self.edge2index[f"{i}<-{j}"]],
                                                                   indexs[self.edge2index[f"{i}<-{j}"]].item())
                              for j, h in enumerate(states)))
        return torch.cat(states[-self._multiplier:], dim=1)

    def forward_darts(self, s0, s1, weightss):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            clist = []
            for j, h in enumerate(states):
                key = f"{i}<-{j}"
                clist.append(self.edges[key].forward_darts(h, weightss[self.edge2index[key]]))
            states.append(sum(clist))
        return torch.cat(states[-self._multiplier:], dim=1)


class NASNetworkDARTS(nn.Module):
    def __init__(self, C, N, steps, multiplier, stem_multiplier, num_classes, search_space, affine,
                 track_running_stats):
        super().__init__()
        self._C, self._layerN, self._steps, self._multiplier = C, N, steps, multiplier
        self.stem = nn.Sequential(nn.Conv2d(3, C * stem_multiplier, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C * stem_multiplier))
        channels = [C] * N + [C * 2] + [C * 2] * (N - 1) + [C * 4] + [C * 4] * (N - 1)
        reductions = [False] * N + [True] + [False] * (N - 1) + [True] + [False] * (N - 1)
        C_prev_prev, C_prev, reduction_prev = C * stem_multiplier, C * stem_multiplier, False
        self.cells = nn.ModuleList()
        for C_curr, reduction in zip(channels, reductions):
            cell = NASNetSearchCell(search_space, steps, multiplier, C_prev_prev, C_prev, C_curr, reduction,
                                    reduction_prev, affine, track_running_stats)
            self.cells.append(cell)
            C_prev_prev, C_prev, reduction_prev = C_prev, multiplier * C_curr, reduction
        self.op_names = list(search_space)
        self.edge2index = self.cells[0].edge2index
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        edges = self.cells[0].num_edges
        self.arch_normal_parameters = nn.Parameter(1e-3 * torch.randn(edges, len(search_space)))
        self.arch_reduce_parameters = nn.Parameter(1e-3 * torch.randn(edges, len(search_space)))

    def get_alphas(self):
        return [self.arch_normal_parameters, self.arch_reduce_parameters]

    def forward(self, inputs):
        normal_w = nn.functional.softmax(self.arch_normal_parameters, dim=1)
        reduce_w = nn.functional.softmax(self.arch_reduce_parameters, dim=1)
        s0 = s1 = self.stem(inputs)
        for cell in self.cells:
            s0, s1 = s1, cell.forward_darts(s0, s1, reduce_w if cell.reduction else normal_w)
        out = self.global_pooling(self.lastact(s1)).flatten(1)
        return out, self.classifier(out)


def build(C=8, N=1, num_classes=10, track_running_stats=True):
    return NASNetworkDARTS(C, N, 4, 4, 3, num_classes, DARTS_SPACE, False, track_running_stats)


def alphas(net):
    return net.get_alphas()
