"""Everything that builds or runs a supernet, top to bottom:

    supernet     DARTS' search network and cell (Supernet, SearchCell)
    mixed_op     DARTS' MixedOp on the memory modes
    dropin       the drop-in for DARTS-family code (use_fused_mixed_ops): their modules given fused methods
    peers        how DARTS-family codebases build their mixed edges and cells, and the fused computation of each
    modes        the memory modes: how a cell preprocesses, computes a node and assembles its output
    lean         the lean mode: each node's terms summed by one fused kernel call
    recompute    the recompute mode: nodes recomputed term by term in backward
    recognize    which DARTS op a module is, by its structure
    routes       faster conv and pool routes (autograd Functions) the fused modes run the ops with
    batchnorm    the statistics of the BatchNorms the fused modes fold or run
    cell_output  a cell's output assembled in place (no concat copy)
The fused ops themselves are in stacnas.fused.
"""
from .dropin import DropInReport, use_fused_mixed_ops
from .mixed_op import MixedOp
from .supernet import SearchCell, Supernet, count_parameters

__all__ = ["DropInReport", "MixedOp", "SearchCell", "Supernet", "count_parameters", "use_fused_mixed_ops"]
