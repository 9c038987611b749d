"""Drop-in pieces for DARTS-like code.

    from stacnas.nn import MixedOp             # DARTS' MixedOp(C, stride), lean by default
    stacnas.nn.use_fused_mixed_ops(model)      # or swap the MixedOps of an existing model in place

Parameter names and call signature are DARTS' (`_ops.<k>...`, forward(x, weights)), so a DARTS state_dict loads
and gives the same outputs and gradients.
"""
from __future__ import annotations

import torch.nn as nn

from . import supernet
from .ops import PRIMITIVES


class MixedOp(supernet.MixedOp):
    """DARTS' MixedOp on the fused kernels: MixedOp(C, stride[, primitives], mode='lean')."""

    def __init__(self, C: int, stride: int, primitives=PRIMITIVES, mode: str = "lean", kernels: str | None = None):
        super().__init__(C, stride, primitives, mode, kernels)


def use_fused_mixed_ops(model: nn.Module, mode: str = "lean", kernels: str | None = None) -> int:
    """Replace, in place, every module of `model` that is a DARTS-style MixedOp (a class named MixedOp holding its
    candidates in `_ops`) by a stacnas MixedOp over the same candidate modules. Returns how many were swapped."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, supernet.MixedOp):
                child.set_mode(mode, kernels)
                swapped += 1
            elif type(child).__name__ == "MixedOp" and isinstance(getattr(child, "_ops", None), nn.ModuleList):
                replacement = MixedOp.from_ops(child._ops, mode, kernels)
                replacement.train(child.training)
                setattr(parent, name, replacement)
                swapped += 1
    return swapped
