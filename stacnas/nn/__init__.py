"""Everything that builds or runs a supernet, top to bottom:

    supernet     DARTS' search network and cell (Supernet, SearchCell)
    mixed_op     DARTS' MixedOp and the drop-in for DARTS-like code (use_fused_mixed_ops)
    modes        the memory modes: how a cell preprocesses, computes a node and assembles its output
    lean         the lean mode: each node's terms summed by one fused kernel call
    recompute    the recompute mode: nodes recomputed term by term in backward
    recognize    which DARTS op a module is, by its structure
    routes       faster conv and pool routes (autograd Functions) the fused modes run the ops with
    batchnorm    the statistics of the BatchNorms the fused modes fold or run
    cell_output  a cell's output assembled in place (no concat copy)
The fused ops themselves are in stacnas.fused.
"""
from .mixed_op import MixedOp, use_fused_mixed_ops
from .supernet import SearchCell, Supernet, count_parameters

__all__ = ["MixedOp", "SearchCell", "Supernet", "count_parameters", "use_fused_mixed_ops"]
