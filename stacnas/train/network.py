"""Networks trained from scratch from a genotype: DARTS' NetworkCIFAR and NetworkImageNet (mobile setting), built
from the description saved with their weights, and what they cost (parameters, multiply-adds)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import genotypes
from ..errors import UsageError
from ..genotypes import Genotype
from ..ops import FactorizedReduce, Identity, ReLUConvBN, final_op


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability drop_prob, scaling the rest by 1/keep (DARTS' drop-path)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x / keep * mask


class Cell(nn.Module):
    def __init__(self, genotype: Genotype, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        pairs = genotype.reduce if reduction else genotype.normal
        self._concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self._indices = [inp for _, inp in pairs]
        self._steps = len(pairs) // 2
        self.multiplier = len(self._concat)
        self._ops = nn.ModuleList(
            final_op(name, C, 2 if reduction and inp < 2 else 1) for name, inp in pairs
        )

    def forward(self, s0, s1, drop_prob: float = 0.0):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            s = 0
            for k in (2 * i, 2 * i + 1):
                op = self._ops[k]
                h = op(states[self._indices[k]])
                if self.training and drop_prob > 0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                s = s + h
            states.append(s)
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryPool(nn.Module):
    """DARTS' 5×5 average pool (stride 3 for CIFAR's 8×8 input, 2 for ImageNet's 7×7), which gives 2×2. Inputs of
    other sizes (digits: 2×2, Fashion-MNIST: 7×7 at stride 3) are pooled adaptively to the same 2×2."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        h, w = x.shape[-2:]
        if (h - 5) // self.stride + 1 == 2 and (w - 5) // self.stride + 1 == 2:
            return nn.functional.avg_pool2d(x, 5, self.stride, 0, count_include_pad=False)
        return nn.functional.adaptive_avg_pool2d(x, 2)


class AuxiliaryHead(nn.Sequential):
    """DARTS' auxiliary classifier. CIFAR: 8×8 input (pool stride 3 → 2×2); ImageNet: 7×7 input, pool stride 2 and,
    as in DARTS' released code, no BN after the 768-channel conv."""

    def __init__(self, C, num_classes, imagenet=False):
        layers = [
            nn.ReLU(inplace=True),
            AuxiliaryPool(stride=2 if imagenet else 3),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
        ]
        if not imagenet:
            layers.append(nn.BatchNorm2d(768))
        layers += [nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(768, num_classes)]
        super().__init__(*layers)


class _Network(nn.Module):
    """Cells after a stem, reductions at ⌊n/3⌋ and ⌊2n/3⌋, auxiliary head after cell ⌊2n/3⌋."""

    def _build_cells(self, genotype, C, layers, C_prev_prev, C_prev, reduction_prev):
        if type(layers) is not int or layers < 3 or type(C) is not int or C < 2:
            raise UsageError(f"a network needs at least 3 cells (it has 2 reduction cells) and C of at least 2, got "
                             f"layers={layers!r}, C={C!r}")
        self.cells = nn.ModuleList()
        self._aux_index = 2 * layers // 3
        C_curr, C_aux = C, None
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == self._aux_index:
                C_aux = C_prev
        return C_prev, C_aux

    def _run_cells(self, s0, s1):
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self._aux_index and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return logits, logits_aux

    def weights_without_auxiliary(self):
        return (p for name, p in self.named_parameters() if not name.startswith("auxiliary_head."))


def _arguments(network: str, genotype, C, num_classes, layers, auxiliary):
    """(genotype, C, num_classes, layers, auxiliary) given in stacnas' order, or in the order of DARTS' model.py,
    `NetworkCIFAR(C, num_classes, layers, auxiliary, genotype)`, which DARTS-family train.py files use."""
    if not genotypes.genotype_like(genotype) and genotypes.genotype_like(auxiliary):
        genotype, C, num_classes, layers, auxiliary = auxiliary, genotype, C, num_classes, layers
    if not genotypes.genotype_like(genotype):
        raise UsageError(f"{network} takes (genotype, C, num_classes, layers, auxiliary), or DARTS' order (C, "
                         f"num_classes, layers, auxiliary, genotype); got {type(genotype).__name__} where the genotype "
                         "goes")
    return genotypes.adopt(genotype), C, num_classes, layers, auxiliary


class NetworkCIFAR(_Network):
    def __init__(self, genotype: Genotype, C=36, num_classes=10, layers=20, auxiliary=True, in_channels=3,
                 stem_multiplier=3):
        super().__init__()
        genotype, C, num_classes, layers, auxiliary = _arguments("NetworkCIFAR", genotype, C, num_classes, layers,
                                                                 auxiliary)
        self.drop_path_prob = 0.0
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        C_prev, C_aux = self._build_cells(genotype, C, layers, C_stem, C_stem, reduction_prev=False)
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        s = self.stem(x)
        return self._run_cells(s, s)


class NetworkImageNet(_Network):
    """Mobile setting: a 3-conv stem reducing ×8 (224 → 28) before the cells."""

    def __init__(self, genotype: Genotype, C=48, num_classes=1000, layers=14, auxiliary=True, in_channels=3):
        super().__init__()
        genotype, C, num_classes, layers, auxiliary = _arguments("NetworkImageNet", genotype, C, num_classes, layers,
                                                                 auxiliary)
        self.drop_path_prob = 0.0
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        C_prev, C_aux = self._build_cells(genotype, C, layers, C, C, reduction_prev=True)
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes, imagenet=True) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        s0 = self.stem0(x)
        return self._run_cells(s0, self.stem1(s0))


def build_network(arch: dict) -> nn.Module:
    """The network an architecture description (trainer.architecture, saved in model.pt) describes."""
    genotype = genotypes.from_dict(arch["genotype"])
    cls = NetworkImageNet if arch["network"] == "imagenet" else NetworkCIFAR
    return cls(genotype, C=arch["C"], num_classes=arch["num_classes"], layers=arch["layers"],
               auxiliary=arch["auxiliary"], in_channels=arch["in_channels"])


def count_parameters_m(model) -> float:
    """Parameters without the auxiliary head, in millions (10^6), as the field reports them."""
    return sum(p.numel() for p in model.weights_without_auxiliary()) / 1e6


@torch.no_grad()
def count_macs(model: nn.Module, arch: dict) -> int:
    """Multiply-adds of one inference (convolutions and linear layers; the auxiliary head is not run)."""
    total = [0]

    def hook(module, _, output):
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total[0] += output.numel() * kernel
        else:
            total[0] += output.numel() * module.in_features

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        model(torch.zeros(1, arch["in_channels"], arch["image_size"], arch["image_size"], device=param.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total[0]
