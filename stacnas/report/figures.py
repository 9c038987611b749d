"""The figures of a run, drawn with matplotlib's object API (no pyplot: no global state, no display needed):
α trajectories per stage and cell type, the clustering's correlation heat maps and dendrogram, and the training
curves. Each function takes what it draws (read by run_folder) and returns a Figure."""
from __future__ import annotations

import io
import math

from matplotlib.figure import Figure

from ..names import SIMILARITY_NAME
from ..ops import OPS, short_name
from ..spaces import edge_endpoints, state_name
from .run_folder import RunFolder

# one colour per op, the same in every figure (tab10 order; `none` grey)
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
            "#7f7f7f", "#aec7e8", "#ffbb78"]
_OP_COLOUR = {op: _PALETTE[i % len(_PALETTE)] for i, op in enumerate(op for op in OPS if op != "none")}
_OP_COLOUR["none"] = "0.55"


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _cluster_labels(run: RunFolder) -> dict[str, tuple[str, int]]:
    """Stage 1's ops are cluster representatives: representative -> (its cluster's label, cluster index)."""
    clusters = run.clusters or {}
    return {rep: ("/".join(map(short_name, group)), i)
            for i, (group, rep) in enumerate(zip(clusters.get("groups", []), clusters.get("representatives", [])))}


def _kept(run: RunFolder, stage: str, cell_type: str) -> list[tuple[int, int, str]]:
    """(node, input, op) of the edges the final genotype keeps, when `stage` is the one it was derived from."""
    final = "darts" if "darts" in run.spaces else "stage2"
    if run.genotype is None or stage != final:
        return []
    return [(i // 2, inp, op) for i, (op, inp) in enumerate(getattr(run.genotype, cell_type))]


def alpha_figure(run: RunFolder, stage: str, cell_type: str) -> Figure:
    """The softmax weight of every op of every edge over the stage's epochs: one panel per edge, a row per node,
    a column per input; the edges the genotype keeps framed in bold. Stage 1 is coloured and labelled by
    cluster."""
    records = run.records(stage)
    epochs = [r["epoch"] for r in records]
    weights = [r["alpha_softmax"][cell_type] for r in records]  # epoch -> edge -> op
    num_edges = len(weights[0])
    edge_ops = run.spaces.get(stage, {}).get(cell_type) or [[f"op {k}" for k in range(len(w))] for w in weights[0]]
    ends = edge_endpoints(num_edges)
    rows, cols = ends[-1][1] + 1, ends[-1][1] + 2
    fig = Figure(figsize=(2.6 * cols, 2.0 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    clusters = _cluster_labels(run) if stage == "stage1" else {}
    legend = {}
    for e, (inp, node) in enumerate(ends):
        ax = axes[node][inp]
        for k, op in enumerate(edge_ops[e]):
            label, colour = short_name(op), _OP_COLOUR.get(op, "black")
            if op in clusters:
                label, index = clusters[op]
                colour = _PALETTE[index % len(_PALETTE)]
            line, = ax.plot(epochs, [w[e][k] for w in weights], color=colour, lw=1.6, marker="." if len(epochs) < 12
                            else None, ls="--" if op == "none" else "-", label=label)
            legend.setdefault(label, line)
        ax.set_title(f"{state_name(inp)} → {node}", fontsize=9)
        ax.grid(alpha=0.3)
    for node in range(rows):
        for inp in range(node + 2, cols):
            axes[node][inp].axis("off")
        axes[node][0].set_ylabel("softmax α")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for node, inp, op in _kept(run, stage, cell_type):
        ax = axes[node][inp]
        ax.set_title(f"{state_name(inp)} → {node}: {short_name(op)} kept", fontsize=9, fontweight="bold")
        for spine in ax.spines.values():
            spine.set_linewidth(2.2)
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(len(legend), 8),
               title="clusters" if clusters else None)
    fig.suptitle(f"α over epochs · {stage} · {cell_type} cell", fontsize=12)
    return fig


def _cut_distance(report: dict) -> float:
    """Where the dendrogram was cut: the threshold, or between the merges that leave `count` clusters."""
    cut, merges = report["cut"], [row[2] for row in report["linkage"]]
    if "threshold" in cut:
        return cut["threshold"]
    count = cut["count"]
    if count <= 1 or not merges:
        return max(merges, default=0.0) + 0.02
    below = merges[-count] if count <= len(merges) else 0.0
    above = merges[-count + 1] if count > 1 else merges[-1]
    return (below + above) / 2


def clustering_figure(report: dict) -> Figure:
    """Similarity heat maps (|corr| or CKA; normal, reduce, mean over both) and the dendrogram of average linkage on
    1 − similarity with the cut; `report` is an automatic clustering's clusters.json."""
    from scipy.cluster.hierarchy import dendrogram

    names = [short_name(op) for op in report["ops"]]
    similarity = SIMILARITY_NAME[report.get("statistic", "element")]
    fig = Figure(figsize=(19, 4.6), layout="constrained")
    axes = fig.subplots(1, 4, width_ratios=[1, 1, 1, 1.2])
    image = None
    for ax, key in zip(axes, ("normal", "reduce", "mean")):
        matrix = [[float("nan") if v is None else abs(v) for v in row] for row in report["correlation"][key]]
        image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if v > 0.6 else "white")
        ax.set_title(f"{similarity}, " + ("both cell types" if key == "mean" else f"{key} cells"))
    fig.colorbar(image, ax=axes[:3], shrink=0.8)
    ax = axes[3]
    if report["linkage"]:
        cut = _cut_distance(report)
        dendrogram(report["linkage"], labels=names, ax=ax, color_threshold=cut, above_threshold_color="0.5")
        ax.axhline(cut, color="crimson", ls="--", lw=1.2)
        ax.text(ax.get_xlim()[1], cut, f" cut {cut:.2f}", color="crimson", va="bottom", ha="right")
        ax.set_ylim(0, max(1.0, cut + 0.05))
    ax.set_ylabel(f"distance 1 − {similarity}")
    ax.set_title("average linkage: " + "  ".join("{" + ", ".join(map(short_name, g)) + "}"
                                                  for g in report["groups"]), fontsize=9)
    return fig


# per kind of run: (panel title, [(metrics field, legend label)]); percentages for training, shares for search
_CURVES = {
    "train": [("loss", [("train_loss", "train"), ("test_loss", "test")]),
              ("accuracy (%)", [("train_acc", "train"), ("test_top1", "test top-1"), ("test_top5", "test top-5")]),
              ("learning rate", [("lr", "lr")]),
              ("seconds per epoch", [("seconds", "seconds")]),
              ("peak memory (MiB)", [("peak_rss_mib", "RSS"), ("peak_cuda_mib", "CUDA")])],
    "search": [("loss", [("train_loss", "train"), ("val_loss", "validation")]),
               ("training accuracy", [("train_acc", "train")]),
               ("learning rate (weights)", [("lr", "lr")]),
               ("seconds per epoch", [("seconds", "seconds")]),
               ("peak memory (MiB)", [("peak_rss_mib", "RSS"), ("peak_cuda_mib", "CUDA")])],
}
_HESSIAN = ("Hessian of α's loss: λmax", [("hessian_eigenvalue", "λmax")])  # with --hessian-every


def curves_figure(run: RunFolder) -> Figure:
    """Per epoch: loss, accuracy, learning rate, seconds and peak memory (and the Hessian's largest eigenvalue where
    the search logged it). A search's stages follow each other on one epoch axis, separated by dashed lines."""
    panels = _CURVES["train" if run.kind == "train" else "search"]
    if any("hessian_eigenvalue" in r for stage in run.stages() for r in run.records(stage)):
        panels = panels + [_HESSIAN]
    fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels))
    offset = 0
    for stage in run.stages():
        records = run.records(stage)
        x = [offset + r["epoch"] for r in records]
        for ax, (title, fields) in zip(axes, panels):
            for key, label in fields:
                points = [(xi, r[key]) for xi, r in zip(x, records) if key in r]
                if points:
                    ax.plot(*zip(*points), marker="." if len(points) < 30 else None,
                            label=f"{stage} {label}" if stage else label)
            ax.set_title(title)
            if stage and offset:
                ax.axvline(offset + 0.5, color="0.6", ls="--", lw=1)
        offset = max(x, default=offset)
    for ax in axes:
        ax.set_xlabel("epoch" + (" (stages in turn)" if run.kind != "train" else ""))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    return fig
