"""The memory modes (stacnas.names.MEMORY_MODES) as the three things a search cell delegates: how it preprocesses
its inputs, how it computes a node from its incoming edges, and how it assembles its output.

    reference  DARTS' own: op(s), sum over edges of sum(w * op(h)), torch.cat
    lean       the fused sum of stacnas.nn.lean, nodes written into their slices of the cell's output
    recompute  as lean, each node keeping only its inputs (stacnas.nn.recompute)

A fused node takes each edge as its candidate ops (or a MixedOp holding them in `_ops`), weighted by one row of the
node's weights; a reference node calls the MixedOps.
"""
from __future__ import annotations

import torch

from .. import fused
from ..errors import UsageError
from ..names import MEMORY_MODES
from .cell_output import CellOutput
from .lean import lean_node, lean_preprocess, own_forward
from .recompute import recompute_node


def check_mode(mode: str) -> str:
    if mode not in MEMORY_MODES:
        raise UsageError(f"unknown memory mode {mode!r}; choose one of {', '.join(MEMORY_MODES)}")
    return mode


class ReferenceCell:
    """One forward of a cell in the reference mode: exactly DARTS' search cell."""

    def preprocess(self, op, s):
        return op(s)

    def node(self, edges, states, weights, output=True):
        """edges: the MixedOps (their forward hooks fire, as clustering's recording needs)."""
        return sum(edge(h, w) for edge, h, w in zip(edges, states, weights))

    def output(self, nodes):
        return torch.cat(nodes, dim=1)


class FusedCell:
    """One forward of a cell in the lean or recompute mode. With `in_place`, the nodes that make up the cell's output
    (`nodes` of them, computed last) are written into one CellOutput (no concat copy), except while torch.compile
    traces: it cannot follow the nodes' shared storage, so they are concatenated; without, always (code that changes
    a cell's output in place afterwards would change the node states its ops kept for backward). call: see
    stacnas.nn.lean.lean_term."""

    def __init__(self, mode: str, nodes: int, kernels: str | None, device: torch.device, call=own_forward,
                 in_place: bool = True):
        self.backend = fused.resolve_backend(kernels, device)
        self.node_function = recompute_node if mode == "recompute" else lean_node
        self.out = CellOutput(nodes) if in_place and not torch.compiler.is_compiling() else None
        self.call = call

    def preprocess(self, op, s):
        return lean_preprocess(op, s, self.backend)

    def node(self, edges, states, weights, output=True):
        """edges: each one's candidates, or a MixedOp holding them in `_ops`; output: whether this node is one of the
        cell's output nodes."""
        edges = [getattr(edge, "_ops", edge) for edge in edges]
        return self.node_function(edges, states, weights, self.backend, self.out if output else None, self.call)

    def output(self, nodes):
        return self.out.gather(nodes) if self.out is not None else torch.cat(nodes, dim=1)


def cell_forward(mode: str, nodes: int, kernels: str | None, device: torch.device, call=own_forward,
                 in_place: bool = True):
    """What one forward of a cell with `nodes` output nodes delegates in `mode` (in_place: see FusedCell)."""
    return ReferenceCell() if mode == "reference" else FusedCell(mode, nodes, kernels, device, call, in_place)


def darts_cell(run, preprocess0, preprocess1, s0, s1, steps: int, multiplier: int, edges_of, weights_of):
    """DARTS' search cell: both inputs preprocessed; node i sums its edges from every earlier state (edges_of(i, n):
    those n edges, as run.node takes them; weights_of(i, n): their weights, one row each); the output concatenates
    the last `multiplier` nodes. run: what this forward delegates (cell_forward)."""
    states = [run.preprocess(preprocess0, s0), run.preprocess(preprocess1, s1)]
    for i in range(steps):
        n = len(states)
        states.append(run.node(edges_of(i, n), states, weights_of(i, n), output=i >= steps - multiplier))
    return run.output(states[-multiplier:])


def mixed_edge(mode: str, candidates, x, weights, kernels: str | None, call=own_forward):
    """One mixed edge on its own: the reference sum, or a one-edge node of the lean or recompute mode."""
    if mode == "reference":
        return sum(w * call(op, x) for w, op in zip(weights, candidates))
    node_function = recompute_node if mode == "recompute" else lean_node
    return node_function([candidates], [x], weights.view(1, -1), kernels, call=call)
