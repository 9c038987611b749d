"""Candidate operations of cell-based NAS, exactly as DARTS defines them.

Every builder takes ``(C, stride, affine)``. ``affine=False`` is the search form (DARTS' supernet), ``True``
the final form. In the search form pools are followed by BN(affine=False) by the mixed edge
(``search_op``), as in DARTS' ``MixedOp``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UsageError

# DARTS' order: α columns of the `darts` space follow it.
PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


class ReLUConvBN(nn.Module):
    """ReLU, conv, BN. Like DARTS' ops, the layers sit in `self.op` so parameter names match DARTS' checkpoints."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    """ReLU, depthwise k×k (dilated), pointwise 1×1, BN."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked DilConv(dilation=1); only the first one strides."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, 1, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    """`none`: zeros of the (strided) input's shape."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Noise(nn.Module):
    """`noise` (RobustDARTS S4): N(mean, std) samples of the (strided) input's shape, independent of x."""

    def __init__(self, stride, mean=0.0, std=1.0):
        super().__init__()
        self.stride, self.mean, self.std = stride, mean, std

    def forward(self, x):
        shape = x[:, :, :: self.stride, :: self.stride].shape
        return torch.empty(shape, dtype=x.dtype, device=x.device).normal_(self.mean, self.std)


class FactorizedReduce(nn.Module):
    """Halves the resolution: two 1×1 stride-2 convs on x and on x shifted by one pixel, concatenated, BN.

    DARTS only handles even sizes; for odd ones the shifted input is padded by one so both halves agree
    (a no-op for every even size).
    """

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        if C_out % 2:
            raise UsageError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        shifted = x[:, :, 1:, 1:]
        if x.shape[2] % 2 or x.shape[3] % 2:
            shifted = F.pad(shifted, (0, x.shape[3] % 2, 0, x.shape[2] % 2))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


OPS = {
    "none": lambda C, stride, affine: Zero(stride),
    "noise": lambda C, stride, affine: Noise(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
    "nor_conv_1x1": lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine),
    "nor_conv_3x3": lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine),
}

def check_primitive(name: str) -> str:
    if name not in OPS:
        raise UsageError(f"unknown operation {name!r}; known: {', '.join(sorted(OPS))}")
    return name


def final_op(name: str, C: int, stride: int) -> nn.Module:
    """The op as it appears in a network trained from scratch (BN affine, pools bare)."""
    return OPS[check_primitive(name)](C, stride, True)


def search_op(name: str, C: int, stride: int) -> nn.Module:
    """The op as it appears on a supernet edge (BN affine=False, pools followed by BN(affine=False))."""
    op = OPS[check_primitive(name)](C, stride, False)
    if "pool" in name:
        op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
    return op


_SHORT = {"max_pool_3x3": "max3", "avg_pool_3x3": "avg3", "skip_connect": "skip", "sep_conv_3x3": "sep3",
          "sep_conv_5x5": "sep5", "sep_conv_7x7": "sep7", "dil_conv_3x3": "dil3", "dil_conv_5x5": "dil5",
          "nor_conv_1x1": "nor1", "nor_conv_3x3": "nor3"}


def short_name(op: str) -> str:
    """A short label for tables and summaries (max3, sep5, ...)."""
    return _SHORT.get(op, op)
