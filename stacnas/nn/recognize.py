"""Which candidate an nn.Module is, recognized by its structure, so that stacnas' op classes and those of DARTS-family
code (DARTS, RobustDARTS, P-DARTS, PC-DARTS, AutoDL-Projects, NASLib; recognized by class name and layers) get the
same lean treatment. Anything not recognized runs as it is, through its own forward. Each module is recognized once
(recognize() remembers it; use_fused_mixed_ops makes the modules it fuses be recognized afresh)."""
from __future__ import annotations

import weakref
from typing import NamedTuple

import torch.nn as nn

from ..ops import FactorizedReduce, Identity, Zero

POOLS = (nn.AvgPool2d, nn.MaxPool2d)


def _parameter_free_named(op: nn.Module, *names: str) -> bool:
    return type(op).__name__ in names and not any(True for _ in op.parameters())


def is_none(op: nn.Module) -> bool:
    """`none`: its output is zeros (DARTS' and its descendants' Zero; NASLib's Zero1x1 doubles the channels and is
    not one)."""
    return isinstance(op, Zero) or _parameter_free_named(op, "Zero")


def is_identity(op: nn.Module) -> bool:
    return isinstance(op, (Identity, nn.Identity)) or _parameter_free_named(op, "Identity")


def foldable(bn) -> bool:
    """A BatchNorm without affine parameters: it can be folded into the fused sum."""
    return isinstance(bn, nn.BatchNorm2d) and not bn.affine


def conv1x1(layer) -> bool:
    return (type(layer) is nn.Conv2d and layer.padding_mode == "zeros" and layer.kernel_size == (1, 1)
            and layer.groups == 1 and layer.padding == (0, 0) and layer.dilation == (1, 1))


def factorized_reduce_convs(op: nn.Module):
    """The two 1×1 stride-2 convs of a FactorizedReduce (skip_connect at stride 2: ReLU, conv on x and on x shifted
    by a pixel, concatenated, BN), or None. DARTS' keeps them in conv_1 and conv_2 and handles no odd sizes;
    stacnas' pads the shifted input on odd sizes, as AutoDL's (convs[0], convs[1], pad) does on every size."""
    if isinstance(op, FactorizedReduce):
        return op.conv_1, op.conv_2
    if type(op).__name__ != "FactorizedReduce" or not foldable(getattr(op, "bn", None)) \
            or not isinstance(getattr(op, "relu", None), nn.ReLU):
        return None
    if hasattr(op, "conv_1") and hasattr(op, "conv_2"):
        convs = (op.conv_1, op.conv_2)
    elif isinstance(getattr(op, "convs", None), nn.ModuleList) and len(op.convs) == 2 and getattr(op, "stride", 0) == 2 \
            and isinstance(getattr(op, "pad", None), nn.ConstantPad2d) and op.pad.padding == (0, 1, 0, 1):
        convs = tuple(op.convs)
    else:
        return None
    return convs if all(conv1x1(c) and c.stride == (2, 2) for c in convs) else None


def pads_odd_sizes(op: nn.Module) -> bool:
    """Whether a FactorizedReduce pads the shifted input (stacnas', AutoDL's) rather than failing on odd sizes."""
    return isinstance(op, FactorizedReduce) or hasattr(op, "pad")


def layers_of(op: nn.Module) -> list | None:
    """The layers an op applies one after another, for the ways DARTS-family code builds its candidates, else None:
    layers in `op.op` (DARTS' ops, AutoDL's ReLUConvBN and SepConv) or the op a Sequential itself; AutoDL's
    DualSepConv (op_a, then op_b); a bare pool, or one in AutoDL's POOLING (without a preprocess) or in NASLib's
    MaxPool/AvgPool (`maxpool`/`avgpool`)."""
    if isinstance(op, POOLS):
        return [op]
    if isinstance(op, nn.Sequential):
        return list(op)
    name = type(op).__name__
    if name == "DualSepConv":
        halves = [getattr(op, half, None) for half in ("op_a", "op_b")]
        halves = [layers_of(h) if isinstance(h, nn.Module) else None for h in halves]
        return None if None in halves else halves[0] + halves[1]
    if name == "POOLING":
        return [op.op] if getattr(op, "preprocess", True) is None and isinstance(getattr(op, "op", None), POOLS) \
            else None
    inner = getattr(op, {"MaxPool": "maxpool", "AvgPool": "avgpool"}.get(name, "op"), None)
    if isinstance(inner, POOLS):
        return [inner] if name in ("MaxPool", "AvgPool") else None
    return list(inner) if isinstance(inner, nn.Sequential) else None


def pool_then_bn(layers: list) -> bool:
    """A search-form pool: max or avg pool, then BatchNorm(affine=False)."""
    return len(layers) == 2 and isinstance(layers[0], POOLS) and foldable(layers[1])


def skip_then_dropout(layers: list) -> bool:
    """skip_connect followed by Dropout (P-DARTS' skip in its later stages)."""
    return len(layers) == 2 and is_identity(layers[0]) and type(layers[1]) is nn.Dropout


def bare_pool(layers: list) -> bool:
    """A pool with no BatchNorm after it (AutoDL's and NAS-Bench-201's search pools)."""
    return len(layers) == 1 and isinstance(layers[0], POOLS)


def plain_conv(layer: nn.Module) -> bool:
    """A conv the lean routes run: nn.Conv2d itself, zero padding given as numbers (not 'same'), bias or not
    (AutoDL's search convs carry one)."""
    return type(layer) is nn.Conv2d and layer.padding_mode == "zeros" and not isinstance(layer.padding, str)


def is_conv_chain(layers: list) -> bool:
    """ReLU, conv, (conv | BN ReLU conv)*, BN(affine=False): nor_conv, dil_conv, sep_conv, DualSepConv."""
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


class Recognized(NamedTuple):
    """What an op is to the lean and recompute modes. kind: 'none', 'identity', 'dropout' (skip then Dropout; parts:
    the Dropout), 'factorized_reduce' (parts: its two convs, its BN, whether it pads odd sizes), 'pool_bn' (the pool,
    the BN), 'pool' (the pool), 'conv_chain' (the ConvChain steps, the trailing BN), or None: the op runs as it is,
    through its own forward."""
    kind: str | None
    parts: tuple = ()


_RECOGNIZED: "weakref.WeakKeyDictionary[nn.Module, Recognized]" = weakref.WeakKeyDictionary()


def recognize(op: nn.Module) -> Recognized:
    """op's Recognized, found at its first use and remembered (forget() makes a changed module be looked at again)."""
    found = _RECOGNIZED.get(op)
    if found is None:
        found = _RECOGNIZED[op] = _recognize(op)
    return found


def forget(module: nn.Module) -> None:
    """Recognize module and everything in it afresh at their next use."""
    for m in module.modules():
        _RECOGNIZED.pop(m, None)


def structure(op: nn.Module) -> str | None:
    return recognize(op).kind


def draws_random_numbers(op: nn.Module) -> bool:
    """Whether op may draw random numbers (a Dropout, or anything run through its own forward: `noise`, a user's
    module): the recompute mode replays the RNG states for it."""
    return structure(op) in (None, "dropout")


def _recognize(op: nn.Module) -> Recognized:
    if is_none(op):
        return Recognized("none")
    if is_identity(op):
        return Recognized("identity")
    convs = factorized_reduce_convs(op)
    if convs is not None:
        return Recognized("factorized_reduce", (convs, op.bn, pads_odd_sizes(op)))
    layers = layers_of(op)
    if layers is None:
        return Recognized(None)
    if skip_then_dropout(layers):
        return Recognized("dropout", (layers[1],))
    if pool_then_bn(layers):
        return Recognized("pool_bn", (layers[0], layers[1]))
    if bare_pool(layers):
        return Recognized("pool", (layers[0],))
    return Recognized("conv_chain", (chain_steps(layers), layers[-1])) if is_conv_chain(layers) else Recognized(None)


def chain_steps(layers) -> tuple:
    """ConvChain's steps (stacnas.nn.routes) for a conv chain (is_conv_chain), its trailing BN left out: ReLU+conv,
    then each conv plain or after BN+ReLU."""
    steps, i = [(layers[1], None, True)], 2
    while i < len(layers) - 1:
        if isinstance(layers[i], nn.BatchNorm2d):  # BN → ReLU → conv inside sep_conv
            steps.append((layers[i + 2], layers[i], True))
            i += 3
        else:
            steps.append((layers[i], None, False))
            i += 1
    return tuple(steps)
