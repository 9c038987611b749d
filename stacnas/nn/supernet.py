"""DARTS' search network (its `model_search.py`), generalised to per-edge op sets: the supernet every search trains.

The cell is DARTS' own; how it computes (stacnas.nn.modes: the plain reference, or the fused lean and recompute
modes) is handed to its forward, so the parameters and their names are the same in every mode and a state_dict
moves freely between them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import genotypes
from ..errors import UsageError
from ..names import CELL_TYPES, DEFAULT_MEMORY_MODE
from ..ops import FactorizedReduce, ReLUConvBN
from ..spaces import SearchSpace
from .mixed_op import MixedOp
from .modes import ReferenceCell, cell_forward, check_mode, darts_cell


class SearchCell(nn.Module):
    def __init__(self, edge_ops, nodes, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        self.nodes = nodes
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._ops = nn.ModuleList()
        edge = 0
        for node in range(nodes):
            for inp in range(2 + node):
                stride = 2 if reduction and inp < 2 else 1
                self._ops.append(MixedOp(C, stride, edge_ops[edge]))
                edge += 1

    def forward(self, s0, s1, weights, run=None):
        """weights: (edges, max_ops); entries past an edge's own op count are ignored. run: how this forward computes
        (stacnas.nn.modes.cell_forward); DARTS' plain computation when None."""
        first = [node * (node + 3) // 2 for node in range(self.nodes)]  # node i's first edge: 2 + 3 + ... before it
        return darts_cell(run or ReferenceCell(), self.preprocess0, self.preprocess1, s0, s1, self.nodes, self.nodes,
                          lambda i, n: self._ops[first[i]:first[i] + n],
                          lambda i, n: weights[first[i]:first[i] + n])


class Supernet(nn.Module):
    """DARTS' search network over a SearchSpace.

    α is one (edges, max_ops) tensor per cell type, shared by all cells of that type; on edges with fewer ops
    than max_ops the extra entries are masked out of the softmax (never padded with fake ops).

    mode: `reference` (every edge computes sum(w * op(x)), the oracle), `lean` (fused, far less memory kept for
    backward; the default) or `recompute` (keeps only node inputs; recomputes candidates in backward). kernels: the
    backend of the fused ops (None: STACNAS_KERNELS or automatic).
    """

    def __init__(self, space: SearchSpace, C: int = 16, layers: int = 8, nodes: int = 4, num_classes: int = 10,
                 in_channels: int = 3, stem_multiplier: int = 3, mode: str = DEFAULT_MEMORY_MODE,
                 kernels: str | None = None):
        super().__init__()
        if layers < 3:
            raise UsageError(f"a supernet needs at least 3 cells (it has 2 reduction cells), got {layers}")
        for name, value in (("C", C), ("nodes", nodes), ("num_classes", num_classes), ("in_channels", in_channels),
                            ("stem_multiplier", stem_multiplier)):
            if type(value) is not int or value < 1:
                raise UsageError(f"Supernet: {name} must be a positive integer, got {value!r}")
        self.space, self.C, self.layers, self.nodes = space, C, layers, nodes
        self.num_classes, self.in_channels = num_classes, in_channels
        self.edge_ops = {t: space.edge_ops(t, nodes) for t in CELL_TYPES}

        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in self.reduction_indices()
            if reduction:
                C_curr *= 2
            edge_ops = self.edge_ops["reduce" if reduction else "normal"]
            self.cells.append(SearchCell(edge_ops, nodes, C_prev_prev, C_prev, C_curr, reduction, reduction_prev))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, nodes * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        for cell_type, edge_ops in self.edge_ops.items():
            width = max(len(ops) for ops in edge_ops)
            mask = torch.tensor([[k < len(ops) for k in range(width)] for ops in edge_ops])
            self.register_buffer(f"mask_{cell_type}", mask, persistent=False)
            self.register_parameter(f"alpha_{cell_type}", nn.Parameter(1e-3 * torch.randn(len(edge_ops), width)))
        self.set_mode(mode, kernels)

    def set_mode(self, mode: str, kernels: str | None = None) -> "Supernet":
        """Compute in another memory mode from now on (every MixedOp too, for a cell run in the reference mode)."""
        self.mode, self.kernels = check_mode(mode), kernels
        for module in self.modules():
            if isinstance(module, MixedOp):
                module.set_mode(mode, kernels)
        return self

    def reduction_indices(self) -> tuple[int, int]:
        return self.layers // 3, 2 * self.layers // 3

    def alphas(self) -> list[nn.Parameter]:
        return [self.alpha_normal, self.alpha_reduce]

    def weights(self):
        """Every parameter except α (the network weights the SGD optimizer steps)."""
        alpha_ids = {id(a) for a in self.alphas()}
        return (p for p in self.parameters() if id(p) not in alpha_ids)

    def edge_weights(self, cell_type: str) -> torch.Tensor:
        """Softmax of α over each edge's own ops; masked entries are exactly 0."""
        alpha = getattr(self, f"alpha_{cell_type}")
        mask = getattr(self, f"mask_{cell_type}")
        return F.softmax(alpha.masked_fill(~mask, float("-inf")), dim=-1)

    def forward(self, x):
        w_normal, w_reduce = self.edge_weights("normal"), self.edge_weights("reduce")
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            run = cell_forward(self.mode, cell.nodes, self.kernels, x.device)
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal, run)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def genotype(self) -> genotypes.Genotype:
        with torch.no_grad():
            return genotypes.derive(self.edge_weights("normal"), self.edge_weights("reduce"),
                                    self.edge_ops["normal"], self.edge_ops["reduce"], self.nodes)


def count_parameters(params) -> int:
    return sum(p.numel() for p in params)
