"""Which DARTS candidate an nn.Module is, recognized by its structure, so that stacnas' op classes and those of
DARTS-like code (recognized by class name and layers) get the same lean treatment. Anything not recognized runs
as it is."""
from __future__ import annotations

import torch.nn as nn

from ..ops import FactorizedReduce, Identity, Noise, Zero


def _parameter_free_named(op: nn.Module, name: str) -> bool:
    return type(op).__name__ == name and not any(True for _ in op.parameters())


def is_none(op: nn.Module) -> bool:
    """`none`: its output is zeros."""
    return isinstance(op, Zero) or _parameter_free_named(op, "Zero")


def is_identity(op: nn.Module) -> bool:
    return isinstance(op, (Identity, nn.Identity)) or _parameter_free_named(op, "Identity")


def is_factorized_reduce(op: nn.Module) -> bool:
    """skip_connect at stride 2 (conv_1, conv_2, bn); DARTS' own pads no odd sizes, stacnas' does."""
    return isinstance(op, FactorizedReduce) or (type(op).__name__ == "FactorizedReduce" and hasattr(op, "conv_1")
                                                and hasattr(op, "conv_2") and foldable(getattr(op, "bn", None)))


def uses_rng(op: nn.Module) -> bool:
    """`noise` (stacnas' Noise, RobustDARTS' NoiseOp): its output is random, so a recomputation replays its RNG."""
    return isinstance(op, Noise) or type(op).__name__ in ("Noise", "NoiseOp")


def foldable(bn) -> bool:
    """A BatchNorm without affine parameters: it can be folded into the fused sum."""
    return isinstance(bn, nn.BatchNorm2d) and not bn.affine


def layers_of(op: nn.Module) -> list | None:
    """The layer list of an op built like DARTS' (layers in `op.op`, or the op itself a Sequential), else None."""
    inner = getattr(op, "op", None)
    if isinstance(inner, nn.Sequential):
        return list(inner)
    return list(op) if isinstance(op, nn.Sequential) else None


def is_pool_then_bn(layers: list) -> bool:
    """A search-form pool: max or avg pool, then BatchNorm(affine=False)."""
    return len(layers) == 2 and isinstance(layers[0], (nn.AvgPool2d, nn.MaxPool2d)) and foldable(layers[1])


def plain_conv(layer: nn.Module) -> bool:
    return type(layer) is nn.Conv2d and layer.bias is None and layer.padding_mode == "zeros"


def is_conv_chain(layers: list) -> bool:
    """ReLU, conv, (conv | BN ReLU conv)*, BN(affine=False), every conv without bias: nor_conv, dil_conv, sep_conv."""
    if len(layers) < 3 or not isinstance(layers[0], nn.ReLU) or not plain_conv(layers[1]) or not foldable(layers[-1]):
        return False
    i = 2
    while i < len(layers) - 1:
        if plain_conv(layers[i]):
            i += 1
        elif (i + 2 < len(layers) - 1 and foldable(layers[i]) and isinstance(layers[i + 1], nn.ReLU)
              and plain_conv(layers[i + 2])):
            i += 3
        else:
            return False
    return True
