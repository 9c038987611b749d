"""The reference supernet in pure PyTorch: DARTS' search network, generalised to per-edge op sets.

This is the oracle every fused kernel is tested against and the fallback when no compiled path exists, so it
stays as plain as DARTS' `model_search.py`: every mixed edge computes sum(w_k * op_k(x)).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import genotypes, lean
from .ops import PRIMITIVES, FactorizedReduce, ReLUConvBN, search_op
from .spaces import SearchSpace


MODES = ("reference", "lean", "recompute")


class MixedOp(nn.Module):
    """One edge: all candidate ops of the edge, mixed by the weights it is given — DARTS' MixedOp, with DARTS'
    call signature forward(x, weights) and parameter names (`_ops.<k>...`).

    mode `reference` computes sum(w * op(x)) (the oracle); `lean` and `recompute` compute the same numbers with
    less memory kept for backward (see stacnas.lean).
    """

    def __init__(self, C: int, stride: int, primitives=PRIMITIVES, mode: str = "reference",
                 kernels: str | None = None):
        super().__init__()
        self.primitives = tuple(primitives)
        self._ops = nn.ModuleList(search_op(p, C, stride) for p in self.primitives)
        self.set_mode(mode, kernels)

    @classmethod
    def from_ops(cls, ops: nn.ModuleList, mode: str = "lean", kernels: str | None = None) -> "MixedOp":
        """Wrap existing candidate modules (the same objects, so parameters stay shared) in a MixedOp."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.primitives = None  # unknown for candidates built elsewhere
        self._ops = ops
        return self.set_mode(mode, kernels)

    def set_mode(self, mode: str, kernels: str | None = None) -> "MixedOp":
        if mode not in MODES:
            raise ValueError(f"unknown memory mode {mode!r}; choose one of {', '.join(MODES)}")
        self.mode, self.kernels = mode, kernels
        return self

    def forward(self, x, weights):
        if self.mode == "lean":
            return lean.lean_node([self], [x], weights.view(1, -1), self.kernels)
        if self.mode == "recompute":
            return lean.recompute_node([self], [x], weights.view(1, -1), self.kernels)
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class SearchCell(nn.Module):
    def __init__(self, edge_ops, nodes, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        self.nodes = nodes
        self.mode, self.kernels = "reference", None  # set by Supernet.set_mode
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

    def forward(self, s0, s1, weights):
        """weights: (edges, max_ops); entries past an edge's own op count are ignored."""
        if self.mode == "reference":
            states = [self.preprocess0(s0), self.preprocess1(s1)]
        else:
            states = [lean.lean_preprocess(self.preprocess0, s0), lean.lean_preprocess(self.preprocess1, s1)]
        # lean, recompute: nodes are written into their slices of the cell's output (no concat copy); not while
        # torch.compile traces, which cannot follow the shared storage
        out = None if self.mode == "reference" or torch.compiler.is_compiling() else lean.CellOutput(self.nodes)
        offset = 0
        for _ in range(self.nodes):
            edges = self._ops[offset:offset + len(states)]
            node_weights = weights[offset:offset + len(states)]
            if self.mode == "lean":
                states.append(lean.lean_node(edges, states, node_weights, self.kernels, out))
            elif self.mode == "recompute":
                states.append(lean.recompute_node(edges, states, node_weights, self.kernels, out))
            else:
                states.append(sum(edge(h, w) for edge, h, w in zip(edges, states, node_weights)))
            offset += len(states) - 1
        return out.gather(states[-self.nodes:]) if out is not None else torch.cat(states[-self.nodes:], dim=1)


class Supernet(nn.Module):
    """DARTS' search network over a SearchSpace.

    α is one (edges, max_ops) tensor per cell type, shared by all cells of that type; on edges with fewer ops
    than max_ops the extra entries are masked out of the softmax (never padded with fake ops).

    mode: `reference` (every edge computes sum(w * op(x)), the oracle), `lean` (fused, exact, far less memory kept
    for backward) or `recompute` (keeps only node inputs; recomputes candidates in backward). The parameters and
    their names are the same in every mode, so a state_dict moves freely between them. kernels: the backend of the
    fused sum (None: STACNAS_KERNELS or automatic).
    """

    def __init__(self, space: SearchSpace, C: int = 16, layers: int = 8, nodes: int = 4, num_classes: int = 10,
                 in_channels: int = 3, stem_multiplier: int = 3, mode: str = "lean", kernels: str | None = None):
        super().__init__()
        if layers < 3:
            raise ValueError(f"a supernet needs at least 3 cells (it has 2 reduction cells), got {layers}")
        self.space, self.C, self.layers, self.nodes = space, C, layers, nodes
        self.num_classes, self.in_channels = num_classes, in_channels
        self.edge_ops = {t: space.edge_ops(t, nodes) for t in ("normal", "reduce")}

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
        if mode not in MODES:
            raise ValueError(f"unknown memory mode {mode!r}; choose one of {', '.join(MODES)}")
        self.mode, self.kernels = mode, kernels
        for cell in self.cells:
            cell.mode, cell.kernels = mode, kernels
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
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def genotype(self) -> genotypes.Genotype:
        with torch.no_grad():
            return genotypes.derive(self.edge_weights("normal"), self.edge_weights("reduce"),
                                    self.edge_ops["normal"], self.edge_ops["reduce"], self.nodes)


def count_parameters(params) -> int:
    return sum(p.numel() for p in params)
