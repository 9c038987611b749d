"""DARTS' MixedOp on stacnas' memory modes:

    from stacnas.nn import MixedOp             # DARTS' MixedOp(C, stride), lean by default

Parameter names and call signature are DARTS' (`_ops.<k>...`, forward(x, weights)), so a DARTS state_dict loads
and gives the same outputs and gradients. To fuse the MixedOps of existing code instead, see stacnas.nn.dropin.
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

    def set_mode(self, mode: str, kernels: str | None = None) -> "MixedOp":
        self.mode, self.kernels = check_mode(mode), kernels
        return self

    def forward(self, x, weights):
        return mixed_edge(self.mode, self._ops, x, weights, self.kernels)
