"""The memory modes (stacnas.names.MEMORY_MODES) as the three things a search cell delegates: how it preprocesses
its inputs, how it computes a node from its incoming edges, and how it assembles its output.

    reference  DARTS' own: op(s), sum over edges of MixedOp(h, w) = sum(w * op(h)), torch.cat
    lean       the fused sum of stacnas.nn.lean, nodes written into their slices of the cell's output
    recompute  as lean, each node keeping only its inputs (stacnas.nn.recompute)
"""
from __future__ import annotations

import torch

from .. import fused
from ..errors import UsageError
from ..names import MEMORY_MODES
from .cell_output import CellOutput
from .lean import lean_node, lean_preprocess
from .recompute import recompute_node


def check_mode(mode: str) -> str:
    if mode not in MEMORY_MODES:
        raise UsageError(f"unknown memory mode {mode!r}; choose one of {', '.join(MEMORY_MODES)}")
    return mode


class ReferenceCell:
    """One forward of a cell in the reference mode: exactly DARTS' search cell."""

    def preprocess(self, op, s):
        return op(s)

    def node(self, edges, states, weights):
        return sum(edge(h, w) for edge, h, w in zip(edges, states, weights))

    def output(self, nodes):
        return torch.cat(nodes, dim=1)


class FusedCell:
    """One forward of a cell in the lean or recompute mode. The nodes are written into one CellOutput (no concat
    copy), except while torch.compile traces: it cannot follow the nodes' shared storage, so they are concatenated."""

    def __init__(self, mode: str, nodes: int, kernels: str | None, device: torch.device):
        self.backend = fused.resolve_backend(kernels, device)
        self.node_function = recompute_node if mode == "recompute" else lean_node
        self.out = None if torch.compiler.is_compiling() else CellOutput(nodes)

    def preprocess(self, op, s):
        return lean_preprocess(op, s, self.backend)

    def node(self, edges, states, weights):
        return self.node_function(edges, states, weights, self.backend, self.out)

    def output(self, nodes):
        return self.out.gather(nodes) if self.out is not None else torch.cat(nodes, dim=1)


def cell_forward(mode: str, nodes: int, kernels: str | None, device: torch.device):
    """What one forward of a cell with `nodes` nodes delegates in `mode`."""
    return ReferenceCell() if mode == "reference" else FusedCell(mode, nodes, kernels, device)


def mixed_edge(mode: str, edge, x, weights, kernels: str | None):
    """One MixedOp on its own: the reference sum, or a one-edge node of the lean or recompute mode."""
    if mode == "reference":
        return sum(w * op(x) for w, op in zip(weights, edge._ops))
    node_function = recompute_node if mode == "recompute" else lean_node
    return node_function([edge], [x], weights.view(1, -1), kernels)
