"""The bookkeeping of BatchNorms that the lean supernet folds into fused sums or runs itself: the statistics a BN
normalizes with, and its running statistics, updated exactly once per forward as BatchNorm's own forward would."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from .. import fused


def batch_stats(bn: nn.BatchNorm2d, z: torch.Tensor, backend=None):
    """(mean, var, training): the statistics `bn` would normalize z with, and whether they are z's batch statistics
    (then z's gradient flows through them). Updates the running statistics as `bn` would (once)."""
    if bn.training or not bn.track_running_stats:
        mean, var = fused.batch_norm_stats(z, backend)
        if bn.training and bn.track_running_stats:
            update_running_stats([bn], mean[None], var[None], z.numel() // z.shape[1])
        return mean, var, True
    return bn.running_mean, bn.running_var, False


def normalize(bn: nn.BatchNorm2d, z: torch.Tensor):
    """(bn(z), mean, var, training) for a BatchNorm(affine=False), by PyTorch's own kernel as bn's forward calls it
    (running statistics updated there, once): bn's output and the statistics it normalized with (training: z's batch
    statistics, through which z's gradient flows)."""
    training = bn.training or not bn.track_running_stats
    tracking = bn.training and bn.track_running_stats
    factor = 0.0
    if tracking:
        bn.num_batches_tracked.add_(1)
        factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    running = (bn.running_mean, bn.running_var) if not training or tracking else (None, None)
    out, mean, invstd = torch.native_batch_norm(z, None, None, *running, training, factor, bn.eps)
    if not training:
        return out, bn.running_mean, bn.running_var, False
    return out, mean, invstd.double().pow(-2).sub(bn.eps).to(mean.dtype), True


def update_running_stats(bns, means, variances, n):
    """What each BatchNorm's forward does to its running statistics, for many BNs at once (foreach ops)."""
    if not bns:
        return
    with torch.no_grad():
        torch._foreach_add_([bn.num_batches_tracked for bn in bns], 1)
        factors = [bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked) for bn in bns]
        unbiased = variances * (n / max(n - 1, 1))
        for stats, batch in (("running_mean", means), ("running_var", unbiased)):
            running = [getattr(bn, stats) for bn in bns]
            if len(set(factors)) == 1:
                torch._foreach_mul_(running, 1 - factors[0])
                torch._foreach_add_(running, list(batch.unbind(0)), alpha=factors[0])
            else:
                for r, b, f in zip(running, batch.unbind(0), factors):
                    r.mul_(1 - f).add_(b, alpha=f)


@contextlib.contextmanager
def frozen_running_stats(module: nn.Module):
    """Run module without changing any BN running statistics (they were updated once already): its training-mode BNs
    stop tracking for the while, so they normalize with the batch statistics as before and update nothing."""
    bns = [bn for bn in module.modules()
           if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.training and bn.track_running_stats]
    for bn in bns:
        bn.track_running_stats = False
    try:
        yield
    finally:
        for bn in bns:
            bn.track_running_stats = True
