"""A cell's output without a concat copy: the lean and recompute modes write each node straight into its channel
slice of one buffer, and the buffer is the cell's output."""
from __future__ import annotations

import torch


class CellOutput:
    """cat(node outputs, dim=1), assembled in place.

    Each slice is a tensor of its own set to the buffer's storage, not a view of the buffer: views share one version
    counter, so writing node 3 would invalidate node 2's output, which node 3's ops saved for backward. The price:
    autograd cannot see an in-place change of the cell output made after `gather` (nothing in a supernet makes one).
    """

    def __init__(self, nodes: int):
        self.nodes, self.buffer, self.written = nodes, None, 0

    def slot(self, like: torch.Tensor) -> torch.Tensor:
        """The next node's slice, shaped like `like` (N, C, ...)."""
        if self.buffer is None:
            self.buffer = like.new_empty(like.shape[0], self.nodes * like.shape[1], *like.shape[2:])
        offset = self.written * like[0].numel()
        self.written += 1
        return like.new_empty(0).set_(self.buffer.untyped_storage(), offset, like.shape, self.buffer.stride())

    def gather(self, nodes) -> torch.Tensor:
        if self.written != self.nodes or any(t.untyped_storage().data_ptr() != self.buffer.untyped_storage().data_ptr()
                                             for t in nodes):
            raise RuntimeError("CellOutput.gather: every node's output must have been written into its slot")
        return _Gather.apply(self.buffer, *nodes)


class _Gather(torch.autograd.Function):
    """Hands on the buffer the nodes were written into; backward splits the gradient as cat's does."""

    @staticmethod
    def forward(ctx, buffer, *nodes):
        ctx.sizes = [t.shape[1] for t in nodes]
        return buffer.detach()

    @staticmethod
    def backward(ctx, grad):
        return (None, *grad.split(ctx.sizes, dim=1))
