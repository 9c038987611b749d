"""How the DARTS-family codebases build their mixed edges and search cells, recognized by structure (class names,
attribute layouts, what their forwards compute), and the fused computation of each: what `use_fused_mixed_ops` gives
their modules (stacnas.nn.dropin). ../shared/reference/dropin-peers.md and docs/dropin.md describe each codebase.

A peer's fused methods have the signature of the module's own, with the module and a Fusion (the memory mode and
kernels) first; they answer NOT_APPLICABLE for a call they do not compute (the module's own method then runs), e.g.
RobustDARTS' cell with drop-path on in training.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .lean import own_forward
from .modes import cell_forward, darts_cell, mixed_edge

NOT_APPLICABLE = object()


@dataclass(frozen=True)
class Fusion:
    """How the fused methods compute: the memory mode (lean or recompute) and the kernels (None: automatic)."""
    mode: str
    kernels: str | None = None

    def edge(self, candidates, x, weights, call=own_forward):
        """sum(w * op(x) for w, op in zip(weights, candidates)), fused; NOT_APPLICABLE unless x is a batch of images
        (N, C, H, W) and weights one number per candidate (1-D)."""
        if not (_images(x) and isinstance(weights, torch.Tensor) and weights.dim() == 1):
            return NOT_APPLICABLE
        n = min(len(candidates), weights.shape[0])
        return mixed_edge(self.mode, list(candidates)[:n], x, weights[:n], self.kernels, call)

    def cell(self, outputs: int, device):
        """What a fused cell delegates (stacnas.nn.modes.cell_forward), its output made of `outputs` nodes and
        concatenated: the user's code may change it in place."""
        return cell_forward(self.mode, outputs, self.kernels, device, in_place=False)


def _images(x) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point()


def _named(module, name: str) -> bool:
    return type(module).__name__ == name


def _module_list(module, attr: str) -> bool:
    return isinstance(getattr(module, attr, None), nn.ModuleList)


def _defines(module, method: str) -> bool:
    """Whether the module's class has the method itself (not nn.Module's placeholder forward)."""
    found = getattr(type(module), method, None)
    return callable(found) and found is not getattr(nn.Module, method, None)


class Peer:
    """One codebase's structure. key: its name in reports and in the fused module's state; methods: the ones fused;
    left_alone: the module's other methods that run as they are, and why; cell: a search cell (its edges are fused
    too), not an edge (what it holds are its candidates)."""
    key = name = ""
    methods: tuple[str, ...] = ("forward",)
    left_alone = ""
    cell = False

    def matches(self, module: nn.Module) -> bool:
        raise NotImplementedError

    def problem(self, module: nn.Module) -> str | None:
        """Why a matching module cannot be fused (None: it can)."""
        return None


# ---- mixed edges ------------------------------------------------------------------------------------------------

class DartsMixedOp(Peer):
    key, name = "darts", "DARTS MixedOp (quark0/darts, RobustDARTS)"

    def matches(self, module):
        return (_named(module, "MixedOp") and _module_list(module, "_ops") and _defines(module, "forward")
                and not hasattr(module, "mp") and not _defines(module, "forward_darts"))

    def forward(self, module, run, x, weights):
        return run.edge(module._ops, x, weights)


class PDartsMixedOp(Peer):
    key, name = "pdarts", "P-DARTS MixedOp (chenxin061/pdarts)"

    def matches(self, module):
        return _named(module, "MixedOp") and _module_list(module, "m_ops") and _defines(module, "forward")

    def forward(self, module, run, x, weights):
        return run.edge(module.m_ops, x, weights)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle, as PC-DARTS applies it to each edge's output."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class PcDartsMixedOp(Peer):
    key, name = "pcdarts", "PC-DARTS MixedOp (yuhuixu1993/PC-DARTS)"

    def matches(self, module):
        return _named(module, "MixedOp") and _module_list(module, "_ops") and isinstance(getattr(module, "mp", None),
                                                                                         nn.MaxPool2d)

    def problem(self, module):
        k = getattr(module, "k", None)
        return None if type(k) is int and k >= 1 else f"its partial-channel factor k is {k!r}, not a positive integer"

    def forward(self, module, run, x, weights):
        """The candidates on the first C/k channels, the rest passed by (max-pooled where the edge reduces), the two
        concatenated and channel-shuffled."""
        if not _images(x) or x.shape[1] % module.k:
            return NOT_APPLICABLE
        part = x.shape[1] // module.k
        y = run.edge(module._ops, x[:, :part], weights)
        if y is NOT_APPLICABLE:
            return y
        rest = x[:, part:]
        if y.shape[2] != x.shape[2]:
            rest = module.mp(rest)
        return channel_shuffle(torch.cat([y, rest], dim=1), module.k)


class AutoDLMixedOp(Peer):
    key, name = "autodl-darts", "AutoDL-Projects MixedOp (DARTS space, NASNetSearchCell)"
    methods = ("forward_darts",)
    left_alone = "forward_gdas runs as it is: it computes one sampled candidate, not a weighted sum of all"

    def matches(self, module):
        return _named(module, "MixedOp") and _module_list(module, "_ops") and _defines(module, "forward_darts")

    def forward_darts(self, module, run, x, weights):
        return run.edge(module._ops, x, weights)


def _naslib_call(op, h):
    return op(h, None)  # NASLib's primitives take the edge's data, which DARTSMixedOp hands them as None


class NASLibMixedOp(Peer):
    key, name = "naslib", "NASLib DARTSMixedOp (automl/NASLib)"
    methods = ("apply_weights",)

    def matches(self, module):
        return _named(module, "DARTSMixedOp") and isinstance(getattr(module, "primitives", None), (list, tuple,
                                                                                                  nn.ModuleList))

    def problem(self, module):
        if not all(isinstance(op, nn.Module) for op in module.primitives):
            return "its primitives are not all modules"
        return None

    def apply_weights(self, module, run, x, weights):
        return run.edge(module.primitives, x, weights, call=_naslib_call)


class NNIDartsLayerChoice(Peer):
    key, name = "nni", "NNI DartsLayerChoice (microsoft/nni, one-shot DARTS)"

    def matches(self, module):
        return _named(module, "DartsLayerChoice") and isinstance(getattr(module, "op_choices", None), nn.ModuleDict)

    def problem(self, module):
        alpha = getattr(module, "alpha", None)
        if not isinstance(alpha, torch.Tensor) or alpha.dim() != 1 or alpha.shape[0] != len(module.op_choices):
            return "its alpha is not one number per candidate"
        return None

    def forward(self, module, run, *args, **kwargs):
        if len(args) != 1 or kwargs:
            return NOT_APPLICABLE
        return run.edge(list(module.op_choices.values()), args[0], F.softmax(module.alpha, -1))


# ---- search cells (every node one fused sum) --------------------------------------------------------------------

def _edge_rows(weights, first: int, n: int):
    return weights[first:first + n] if isinstance(weights, torch.Tensor) and weights.dim() == 2 else None


class DartsCell(Peer):
    """DARTS' search cell (and RobustDARTS', P-DARTS'): preprocess0/1, `_steps` nodes, each summing the mixed edges
    from every earlier state (held in order in `edges`), the last `_multiplier` nodes concatenated."""
    cell = True

    def __init__(self, key, name, edges: str, edge_peer: Peer):
        self.key, self.name, self.edges, self.edge_peer = key, name, edges, edge_peer
        self.left_alone = ("with RobustDARTS' drop-path on (drop_prob > 0, training) the cell runs its own forward "
                           "over the fused edges")

    def matches(self, module):
        steps = getattr(module, "_steps", None)
        if not _named(module, "Cell") or type(steps) is not int or not _module_list(module, self.edges) \
                or not _preprocessed(module):
            return False
        edges = getattr(module, self.edges)
        return len(edges) == steps * (steps + 3) // 2 and all(self.edge_peer.matches(e) for e in edges)

    def problem(self, module):
        multiplier = getattr(module, "_multiplier", None)
        if type(multiplier) is not int or not 1 <= multiplier <= module._steps:
            return f"its _multiplier is {multiplier!r}, not a number of nodes"
        return None

    def forward(self, module, run, s0, s1, weights, *rest, **kwargs):
        drop_prob = (list(rest) + list(kwargs.values()) or [0.0])[0]
        if len(rest) + len(kwargs) > 1 or set(kwargs) - {"drop_prob"} or not isinstance(drop_prob, (int, float)) \
                or (module.training and drop_prob > 0) \
                or not (_images(s0) and _images(s1)) or _edge_rows(weights, 0, 1) is None:
            return NOT_APPLICABLE
        edges = getattr(module, self.edges)
        first = [i * (i + 3) // 2 for i in range(module._steps)]
        return darts_cell(run.cell(module._multiplier, s0.device), module.preprocess0, module.preprocess1, s0, s1,
                          module._steps, module._multiplier,
                          lambda i, n: [_candidates(e) for e in edges[first[i]:first[i] + n]],
                          lambda i, n: _edge_rows(weights, first[i], n))


def _preprocessed(module) -> bool:
    return isinstance(getattr(module, "preprocess0", None), nn.Module) and isinstance(
        getattr(module, "preprocess1", None), nn.Module)


def _candidates(edge):
    return edge.m_ops if hasattr(edge, "m_ops") else edge._ops


class PcDartsCell(DartsCell):
    """PC-DARTS' search cell: node i = sum_j β_j · edge_j(h_j, α_j), each edge a partial-channel MixedOp. Fused as
    shuffle(cat(sum_jk β_j α_jk op_jk(h_j[:C/k]), sum_j β_j rest_j)): the shuffle and concat are linear and the same
    for every edge, so one fused sum over all candidates of a node (β_j α_jk their weights) and one weighted sum of
    the passed-by channels replace each edge's own concat, shuffle and β product."""

    def __init__(self):
        super().__init__("pcdarts-cell", "PC-DARTS search cell (yuhuixu1993/PC-DARTS)", "_ops", PcDartsMixedOp())
        self.left_alone = ""

    def problem(self, module):
        found = super().problem(module)
        if found is None and len({getattr(e, "k", None) for e in module._ops}) != 1:
            return "its edges do not share one partial-channel factor k"
        return found or self.edge_peer.problem(module._ops[0])

    def forward(self, module, run, s0, s1, weights, weights2):
        k = module._ops[0].k
        if not (_images(s0) and _images(s1)) or _edge_rows(weights, 0, 1) is None \
                or not isinstance(weights2, torch.Tensor) or weights2.dim() != 1:
            return NOT_APPLICABLE
        cell = run.cell(module._multiplier, s0.device)
        states = [cell.preprocess(module.preprocess0, s0), cell.preprocess(module.preprocess1, s1)]
        if any(s.shape[1] % k for s in states):
            return NOT_APPLICABLE
        first = 0
        for _ in range(module._steps):
            n = len(states)
            edges, beta = module._ops[first:first + n], weights2[first:first + n]
            parts = [h[:, :h.shape[1] // k] for h in states]
            part = cell.node([e._ops for e in edges], parts, beta[:, None] * weights[first:first + n], output=False)
            rest = [h[:, h.shape[1] // k:] for h in states]
            rest = [r if r.shape[2] == part.shape[2] else e.mp(r) for r, e in zip(rest, edges)]
            passed = sum(b * r for b, r in zip(beta, rest))
            states.append(channel_shuffle(torch.cat([part, passed], dim=1), k))
            first += n
        return torch.cat(states[-module._multiplier:], dim=1)


class AutoDLNASNetCell(Peer):
    """AutoDL-Projects' NASNetSearchCell (its DARTS space): edges in a ModuleDict keyed 'i<-j' (node i from state j),
    their weights the rows edge2index names."""
    key, name = "autodl-darts-cell", "AutoDL-Projects NASNetSearchCell (DARTS space)"
    methods = ("forward_darts",)
    cell = True
    left_alone = "forward_gdas runs as it is: it computes one sampled candidate per edge"

    def matches(self, module):
        edges = getattr(module, "edges", None)
        return (_named(module, "NASNetSearchCell") and isinstance(edges, nn.ModuleDict) and _preprocessed(module)
                and isinstance(getattr(module, "edge2index", None), dict)
                and all(AutoDLMixedOp().matches(e) for e in edges.values()))

    def problem(self, module):
        steps, multiplier = getattr(module, "_steps", None), getattr(module, "_multiplier", None)
        if type(steps) is not int or type(multiplier) is not int or not 1 <= multiplier <= steps:
            return f"its _steps and _multiplier ({steps!r}, {multiplier!r}) are not numbers of nodes"
        wanted = {f"{i}<-{j}" for i in range(steps) for j in range(2 + i)}
        return None if wanted <= set(module.edges) <= set(module.edge2index) else \
            "its edges are not those from every earlier state to each node"

    def forward_darts(self, module, run, s0, s1, weightss):
        if not (_images(s0) and _images(s1)) or _edge_rows(weightss, 0, 1) is None:
            return NOT_APPLICABLE
        keys = [[f"{i}<-{j}" for j in range(2 + i)] for i in range(module._steps)]
        return darts_cell(run.cell(module._multiplier, s0.device), module.preprocess0, module.preprocess1, s0, s1,
                          module._steps, module._multiplier,
                          lambda i, n: [module.edges[key]._ops for key in keys[i]],
                          lambda i, n: weightss[[module.edge2index[key] for key in keys[i]]])


class NB201SearchCell(Peer):
    """AutoDL-Projects' NAS201SearchCell (NAS-Bench-201's space): no MixedOp class; node i sums, over every earlier
    node j, `sum(layer(nodes[j]) * w)` over the ModuleList edges['i<-j']; the output is the last node."""
    key, name = "nas-bench-201", "AutoDL-Projects NAS201SearchCell (NAS-Bench-201 space)"
    methods = ("forward", "forward_joint")
    cell = True
    left_alone = ("forward_gdas, forward_gdas_v1, forward_urs, forward_select and forward_dynamic run as they are: "
                  "each computes one sampled or chosen candidate per edge, not a weighted sum of all")

    def matches(self, module):
        edges = getattr(module, "edges", None)
        return (_named(module, "NAS201SearchCell") and isinstance(edges, nn.ModuleDict)
                and type(getattr(module, "max_nodes", None)) is int
                and isinstance(getattr(module, "edge2index", None), dict)
                and all(isinstance(e, nn.ModuleList) for e in edges.values()))

    def problem(self, module):
        wanted = {f"{i}<-{j}" for i in range(1, module.max_nodes) for j in range(i)}
        return None if wanted <= set(module.edges) <= set(module.edge2index) else \
            "its edges are not those from every earlier node to each node"

    def forward(self, module, run, inputs, weightss):
        if not _images(inputs) or _edge_rows(weightss, 0, 1) is None:
            return NOT_APPLICABLE
        cell = run.cell(1, inputs.device)
        nodes = [inputs]
        for i in range(1, module.max_nodes):
            keys = [f"{i}<-{j}" for j in range(i)]
            nodes.append(cell.node([module.edges[key] for key in keys], nodes,
                                   weightss[[module.edge2index[key] for key in keys]], output=False))
        return nodes[-1]

    forward_joint = forward  # the same weighted sum of every candidate


# Cells first: a cell's edges are fused too (for the calls its fused forward leaves to its own).
PEERS = [DartsCell("darts-cell", "DARTS search cell (quark0/darts, RobustDARTS)", "_ops", DartsMixedOp()),
         DartsCell("pdarts-cell", "P-DARTS search cell (chenxin061/pdarts)", "cell_ops", PDartsMixedOp()),
         PcDartsCell(), AutoDLNASNetCell(), NB201SearchCell(),
         DartsMixedOp(), PDartsMixedOp(), PcDartsMixedOp(), AutoDLMixedOp(), NASLibMixedOp(), NNIDartsLayerChoice()]
BY_KEY = {peer.key: peer for peer in PEERS}

# Modules that look like mixed edges but whose structure is not one of the above, and why they are left alone.
KNOWN_UNSUPPORTED = {
    "DifferentiableMixedLayer": "NNI's DifferentiableMixedLayer is not supported: its weights come from the one-shot "
                                "strategy (α shared by label, through a softmax the strategy may replace by Gumbel's); "
                                "stacnas fuses NNI's DartsLayerChoice",
    "PartialConnectionOp": "NASLib's PartialConnectionOp runs as it is; the DARTSMixedOp inside it is fused",
}


def find_peer(module: nn.Module) -> Peer | None:
    return next((peer for peer in PEERS if peer.matches(module)), None)


def looks_mixed(module: nn.Module) -> bool:
    """A module whose class name says it mixes candidates (…Mixed…, …Choice…), to be reported if left alone."""
    name = type(module).__name__.lower()
    return "mixed" in name or "choice" in name
