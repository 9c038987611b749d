"""Operator clustering: which candidate operations produce correlated outputs (DESIGN.md §1, "Clustering").

After a short warm-up of a supernet that holds every candidate op, each op's output on chosen edges (the first
edge of node 0 and the last edge of the last node of every cell) is recorded on a fixed, seeded set of training
images, before any α weighting. Every element of an op's output (sample × channel × pixel) is one observation
of that op, so an edge with K ops gives a stream of K-vectors; their K×K covariance is accumulated in one pass
with Chan's parallel update in float64 (no outputs stored), turned into a correlation matrix per edge, and
averaged per cell type and overall. The `sample` statistic is StacNAS' reference's instead: each sample's output
is one observation, each feature position centred by its own mean over the samples, the products summed over
positions. The `gradient` statistic measures competition instead of output similarity (the paper's argument: similar
ops compete for α): the correlation, across mini-batches, of the ops' α-gradients on an edge. Ops are clustered by
average-linkage hierarchical clustering on the
distance 1 − |corr|. `none` (all zeros) and `noise` (independent of the input) have no meaningful correlation:
they always stand alone (`none` is added to every edge by the search, `noise` becomes its own cluster).
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..names import CELL_TYPES, SIMILARITY_NAME
from ..nn import MixedOp
from ..nn.batchnorm import frozen_running_stats
from ..ops import short_name
from ..spaces import Clusters

ALONE = ("none", "noise")


class CovarianceAccumulator:
    """Running means and co-moment matrix of K variables, merged batch by batch (Chan, Golub & LeVeque).

    Each observation is a (positions, K) array: the mean is kept per position, and the co-moment sums the products
    of deviations over positions and observations. An (observations, K) input is the plain K-variable covariance.
    """

    def __init__(self, k: int):
        self.n = 0
        self.mean = torch.zeros(1, k, dtype=torch.float64)  # (positions, K), sized by the first update
        self.m2 = torch.zeros(k, k, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        """x: (observations, K) or (observations, positions, K), on any device (the sums follow it there, in
        float64)."""
        x = x.detach().double()
        if x.dim() == 2:
            x = x[:, None, :]
        nb = x.shape[0]
        if nb == 0:
            return
        if self.n == 0:
            self.mean = torch.zeros_like(x[0])
        self.m2 = self.m2.to(x.device)
        mean_b = x.mean(0)
        centered = (x - mean_b).reshape(-1, x.shape[-1])
        n = self.n + nb
        delta = mean_b - self.mean
        self.m2 += centered.T @ centered + (delta.T @ delta) * (self.n * nb / n)
        self.mean += delta * (nb / n)
        self.n = n

    def covariance(self, ddof: int = 1) -> torch.Tensor:
        return self.m2.cpu() / max(self.n - ddof, 1)

    def correlation(self) -> torch.Tensor:
        """Pearson correlation (on the CPU); NaN in the rows of a variable with zero variance (undefined)."""
        m2 = self.m2.cpu()
        std = m2.diagonal().sqrt()
        corr = m2 / torch.outer(std, std)
        corr[std == 0, :] = float("nan")
        corr[:, std == 0] = float("nan")
        return corr.clamp(-1.0, 1.0)


class CKAAccumulator:
    """Linear CKA (Kornblith et al., 2019) between the channel representations of K ops: every pixel of every image
    is one observation of each op's C channels; the (K·C)×(K·C) covariance is accumulated as above, and
    CKA(k, l) = ‖Σ_kl‖²_F / (‖Σ_kk‖_F ‖Σ_ll‖_F) from its blocks. Unlike an element-wise correlation it does not
    change when an op's channels are rotated or scaled together: two convolutions computing the same features in
    other channel orders count as similar."""

    def __init__(self, k: int):
        self.k, self.cov = k, None  # sized by the first update

    def update(self, x: torch.Tensor) -> None:
        """x: (observations, K, C)."""
        if self.cov is None:
            self.channels, self.cov = x.shape[-1], CovarianceAccumulator(self.k * x.shape[-1])
        self.cov.update(x.reshape(len(x), -1))

    def correlation(self) -> torch.Tensor:
        """The K×K CKA matrix (in [0, 1]; NaN for an op with zero variance), where the correlations go."""
        k, c = self.k, self.channels
        blocks = self.cov.m2.cpu().reshape(k, c, k, c).permute(0, 2, 1, 3)  # (K, K, C, C)
        squared = blocks.pow(2).sum((-1, -2))
        norms = squared.diagonal().sqrt()
        return (squared / torch.outer(norms, norms)).clamp(0.0, 1.0)


def without_trailing_bn(op: nn.Module) -> nn.Module:
    """The op up to its trailing BatchNorm (DARTS' convolutions end in one; a search edge's pools are followed by
    one); an op without one unchanged."""
    body = op if isinstance(op, nn.Sequential) else getattr(op, "op", None)
    if isinstance(body, nn.Sequential) and isinstance(body[-1], nn.BatchNorm2d):
        return body[:-1]
    return op


def _observations(outputs: list[torch.Tensor], statistic: str) -> torch.Tensor:
    """The ops' outputs (each (N, C, ...)) as the observations `statistic` correlates."""
    if statistic == "cka":  # (N·pixels, K, C): one observation per pixel, of each op's channels
        stacked = torch.stack([o.flatten(2) for o in outputs], dim=1)  # (N, K, C, pixels)
        return stacked.permute(0, 3, 1, 2).reshape(-1, len(outputs), outputs[0].shape[1])
    stacked = torch.stack([o.reshape(len(o), -1) for o in outputs], dim=-1)  # (N, features, K)
    return stacked.reshape(-1, len(outputs)) if statistic == "element" else stacked


def recorded_edges(num_edges: int) -> tuple[int, int]:
    """The edges whose outputs are recorded in every cell: the first edge of node 0 and the last edge of the
    last node."""
    return 0, num_edges - 1


def _recorded(model):
    """(cell type, MixedOp, indices of its clustered ops) for every recorded edge with at least two of them."""
    found = []
    for cell in model.cells:
        for e in recorded_edges(len(cell._ops)):
            mixed: MixedOp = cell._ops[e]
            ops = [k for k, name in enumerate(mixed.primitives) if name not in ALONE]
            if len(ops) >= 2:
                found.append(("reduce" if cell.reduction else "normal", mixed, ops))
    return found


def record_gradient_correlations(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device,
                                 seed: int = 0) -> dict:
    """The `gradient` statistic: how the ops of an edge compete for α. On each mini-batch of the fixed images the
    gradient of the training loss w.r.t. each op's weight on the edge, ∂L/∂w_k = <∂L/∂m, o_k> (m = sum_k w_k o_k
    the edge's output, o_k op k's), is one observation: one K-vector a mini-batch, correlated over the mini-batches.
    The supernet runs as in a search step (reference mode, BN on batch statistics) but changes nothing: no gradient
    accumulated, no running statistic updated, its random numbers (`noise`) from their own seed. Same result layout
    as record_correlations."""
    accumulators, hooks, edges = [], [], []
    for cell_type, mixed, ops in _recorded(model):
        seen, acc = {}, CovarianceAccumulator(len(ops))
        accumulators.append((cell_type, tuple(mixed.primitives[k] for k in ops), acc))
        edges.append((acc, seen, ops))
        hooks.append(mixed.register_forward_hook(lambda _, args, out, seen=seen: seen.__setitem__("mixed", out)))
        for k in ops:
            hooks.append(mixed._ops[k].register_forward_hook(
                lambda _, args, out, seen=seen, k=k: seen.__setitem__(k, out.detach())))
    devices = [device] if torch.device(device).type == "cuda" else []
    with _measuring(model, hooks, training=True), frozen_running_stats(model), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in range(0, len(images), batch_size):
            x, y = images[start:start + batch_size].to(device), labels[start:start + batch_size].to(device)
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, [seen["mixed"] for _, seen, _ in edges])
            for (acc, seen, ops), g in zip(edges, grads):
                acc.update(torch.stack([(g * seen[k]).sum() for k in ops])[None])
    return _by_cell_type(accumulators)


@contextlib.contextmanager
def _measuring(model, hooks: list, training: bool):
    """The supernet in its reference mode with this training flag for the while; after, the hooks removed and its
    mode and flag put back."""
    was_mode, was_training = model.mode, model.training
    model.set_mode("reference")
    model.train(training)
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        model.set_mode(was_mode, model.kernels)
        model.train(was_training)


def _by_cell_type(accumulators) -> dict:
    """{cell_type: [(ops, K×K matrix), ...]} from (cell type, ops, accumulator) per recorded edge."""
    result = {t: [] for t in CELL_TYPES}
    for cell_type, ops, acc in accumulators:
        result[cell_type].append((ops, acc.correlation()))
    return result


@torch.no_grad()
def record_correlations(model, images: torch.Tensor, batch_size: int, device, statistic: str = "element",
                        before_bn: bool = False) -> dict:
    """Correlation matrices of the candidate ops on the recorded edges of every cell of a supernet.

    Returns {cell_type: [(ops, K×K correlation), ...]} with one entry per recorded edge and cell. The model is
    run in eval mode (BN with its running statistics: the outputs are a fixed function of the image). `statistic`
    (names.CLUSTER_STATISTICS): element centres every element of an op's output by one mean; sample, as StacNAS'
    reference, flattens each sample's output and centres each feature position by its own mean over the samples;
    cka is linear CKA over channels instead of a correlation. `before_bn`: each op's output is taken before its
    trailing BatchNorm.
    """
    accumulators, hooks = [], []

    def record(acc, ops, mixed):
        taps = [without_trailing_bn(mixed._ops[k]) if before_bn else mixed._ops[k] for k in ops]

        def hook(_, args):
            acc.update(_observations([tap(args[0]) for tap in taps], statistic))
        return hook

    for cell_type, mixed, ops in _recorded(model):
        acc = CKAAccumulator(len(ops)) if statistic == "cka" else CovarianceAccumulator(len(ops))
        accumulators.append((cell_type, tuple(mixed.primitives[k] for k in ops), acc))
        hooks.append(mixed.register_forward_pre_hook(record(acc, ops, mixed)))
    with _measuring(model, hooks, training=False):
        for start in range(0, len(images), batch_size):
            model(images[start:start + batch_size].to(device))
    return _by_cell_type(accumulators)


def average_correlation(per_edge: list, ops: list[str]) -> torch.Tensor:
    """Mean over edges of each op pair's correlation (over the edges holding both ops; NaN where none does)."""
    index = {op: i for i, op in enumerate(ops)}
    total = torch.zeros(len(ops), len(ops), dtype=torch.float64)
    count = torch.zeros_like(total)
    for edge_ops, corr in per_edge:
        idx = torch.tensor([index[op] for op in edge_ops])
        defined = ~corr.isnan()
        total[idx[:, None], idx[None, :]] += torch.where(defined, corr, 0.0)
        count[idx[:, None], idx[None, :]] += defined.double()
    return total / count  # 0/0 = NaN: never measured together


def cluster_ops(corr: torch.Tensor, ops: list[str], threshold: float | None = 0.5, count: int | None = None):
    """Average-linkage clustering on 1 − |corr|, cut at a distance threshold or into `count` clusters.

    Returns (groups in op order, scipy linkage matrix or None). An undefined correlation counts as 0.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    if len(ops) == 1:
        return [(ops[0],)], None
    distance = (1.0 - corr.abs()).nan_to_num(1.0).clamp(0.0, 1.0).numpy()
    distance = (distance + distance.T) / 2
    np.fill_diagonal(distance, 0.0)
    Z = linkage(squareform(distance, checks=False), method="average")
    if count:
        labels = fcluster(Z, t=min(count, len(ops)), criterion="maxclust")
    else:
        labels = fcluster(Z, t=threshold, criterion="distance")
    groups = {}
    for op, label in zip(ops, labels):
        groups.setdefault(label, []).append(op)
    return [tuple(g) for g in groups.values()], Z


def mean_alpha(model) -> dict[str, float]:
    """Each op's softmax weight averaged over every edge (both cell types) that holds it."""
    sums, counts = {}, {}
    for cell_type, edge_ops in model.edge_ops.items():
        weights = model.edge_weights(cell_type).detach().cpu()
        for e, ops in enumerate(edge_ops):
            for k, op in enumerate(ops):
                sums[op] = sums.get(op, 0.0) + float(weights[e, k])
                counts[op] = counts.get(op, 0) + 1
    return {op: sums[op] / counts[op] for op in sums}


def pick_representatives(groups, rule: str, alpha: dict[str, float]) -> list[str]:
    """`alpha`: the member with the highest mean softmax weight after warm-up; `first`: the first listed."""
    if rule == "first":
        return [g[0] for g in groups]
    return [max(g, key=lambda op: (alpha.get(op, 0.0), -g.index(op))) for g in groups]


def build_clusters(model, images, batch_size, device, ops, threshold, count, rule, statistic="element",
                   before_bn=False, labels=None, seed=0):
    """The whole clustering of a warmed-up supernet: (Clusters, report for clusters.json). The `gradient` statistic
    needs the images' labels (and draws `noise` from `seed`)."""
    clustered = [op for op in ops if op not in ALONE]
    if statistic == "gradient":
        per_type = record_gradient_correlations(model, images, labels, batch_size, device, seed)
    else:
        per_type = record_correlations(model, images, batch_size, device, statistic, before_bn)
    matrices = {t: average_correlation(per_type[t], clustered) for t in CELL_TYPES}
    overall = average_correlation(per_type["normal"] + per_type["reduce"], clustered)
    groups, Z = cluster_ops(overall, clustered, threshold, count) if clustered else ([], None)
    if "noise" in ops:
        groups.append(("noise",))
    alpha = mean_alpha(model)
    reps = pick_representatives(groups, rule, alpha)
    clusters = Clusters(tuple(groups), tuple(reps))
    report = {
        **clusters.to_dict(),
        "source": "auto",
        "alone": [op for op in ops if op in ALONE],
        "ops": clustered,
        "distance": f"1 - {SIMILARITY_NAME[statistic]}, average linkage",
        "statistic": statistic,
        "before_bn": before_bn,
        "cut": {"count": count} if count else {"threshold": threshold},
        "representative_rule": rule,
        "mean_alpha_after_warmup": alpha,
        "images": len(images),
        **({"observations": -(-len(images) // batch_size)} if statistic == "gradient" else {}),
        "edges_recorded": {t: len(per_type[t]) for t in per_type},
        "correlation": {"mean": _listed(overall), "normal": _listed(matrices["normal"]),
                        "reduce": _listed(matrices["reduce"])},
        "linkage": Z.tolist() if Z is not None else [],
    }
    return clusters, report


def _listed(matrix: torch.Tensor) -> list:
    return [[None if math.isnan(v) else round(v, 6) for v in row] for row in matrix.tolist()]


def render_matrix(ops: list[str], matrix) -> str:
    names = [short_name(op) for op in ops]
    lines = ["      " + " ".join(f"{n:>6}" for n in names)]
    for name, row in zip(names, matrix):
        lines.append(f"{name:>6}" + " ".join("     -" if v is None else f"{v:6.2f}" for v in row))
    return "\n".join(lines)


def render_dendrogram(ops: list[str], linkage_rows: list) -> str:
    """The merge sequence of the linkage, one line per merge: the text form of the dendrogram."""
    members = {i: [op] for i, op in enumerate(ops)}
    lines = []
    for step, (a, b, dist, _) in enumerate(linkage_rows):
        left, right = members[int(a)], members[int(b)]
        members[len(ops) + step] = left + right
        joined = [", ".join(map(short_name, side)) for side in (left, right)]
        lines.append(f"  d={dist:.3f}  {{{joined[0]}}} + {{{joined[1]}}}")
    return "\n".join(lines)


def render_report(report: dict) -> str:
    name = SIMILARITY_NAME[report.get("statistic", "element")]
    parts = [f"{'linear' if name == 'CKA' else 'correlation'} {name} averaged over the recorded edges (normal and "
             "reduction cells):",
             render_matrix(report["ops"], [[None if v is None else abs(v) for v in row]
                                           for row in report["correlation"]["mean"]])]
    if report["linkage"]:
        parts += [f"dendrogram (merges, distance 1 - {name}):", render_dendrogram(report["ops"], report["linkage"])]
    parts.append("clusters: " + "  ".join(
        "{" + ", ".join(g) + "}" + f" rep {r}" for g, r in zip(report["groups"], report["representatives"])))
    if report["alone"]:
        parts.append("alone: " + ", ".join(report["alone"]))
    return "\n".join(parts)
