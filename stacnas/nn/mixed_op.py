"""DARTS' MixedOp on stacnas' memory modes, and the drop-in for DARTS-like code.

    from stacnas.nn import MixedOp             # DARTS' MixedOp(C, stride), lean by default
    stacnas.nn.use_fused_mixed_ops(model)      # or swap the MixedOps of an existing model in place

Parameter names and call signature are DARTS' (`_ops.<k>...`, forward(x, weights)), so a DARTS state_dict loads
and gives the same outputs and gradients.
"""
from __future__ import annotations

import torch.nn as nn

from ..names import DEFAULT_MEMORY_MODE
from ..ops import PRIMITIVES, search_op
from .modes import check_mode, mixed_edge


class MixedOp(nn.Module):
    """One edge: all candidate ops of the edge, mixed by the weights it is given. mode `reference` computes
    sum(w * op(x)); `lean` (the default) and `recompute` the same numbers with less memory kept for backward.
    kernels: the backend of the fused ops (None: STACNAS_KERNELS or automatic)."""

    def __init__(self, C: int, stride: int, primitives=PRIMITIVES, mode: str = DEFAULT_MEMORY_MODE,
                 kernels: str | None = None):
        super().__init__()
        self.primitives = tuple(primitives)
        self._ops = nn.ModuleList(search_op(p, C, stride) for p in self.primitives)
        self.set_mode(mode, kernels)

    @classmethod
    def from_ops(cls, ops: nn.ModuleList, mode: str = DEFAULT_MEMORY_MODE, kernels: str | None = None) -> "MixedOp":
        """Wrap existing candidate modules (the same objects, so parameters stay shared) in a MixedOp."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.primitives = None  # unknown for candidates built elsewhere
        self._ops = ops
        return self.set_mode(mode, kernels)

    def set_mode(self, mode: str, kernels: str | None = None) -> "MixedOp":
        self.mode, self.kernels = check_mode(mode), kernels
        return self

    def forward(self, x, weights):
        return mixed_edge(self.mode, self, x, weights, self.kernels)


def use_fused_mixed_ops(model: nn.Module, mode: str = DEFAULT_MEMORY_MODE, kernels: str | None = None) -> int:
    """Replace, in place, every module of `model` that is a DARTS-style MixedOp (a class named MixedOp holding its
    candidates in `_ops`) by a stacnas MixedOp over the same candidate modules. Returns how many were swapped."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MixedOp):
                child.set_mode(mode, kernels)
                swapped += 1
            elif type(child).__name__ == "MixedOp" and isinstance(getattr(child, "_ops", None), nn.ModuleList):
                replacement = MixedOp.from_ops(child._ops, mode, kernels)
                replacement.train(child.training)
                setattr(parent, name, replacement)
                swapped += 1
    return swapped
