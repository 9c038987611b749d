"""A cell of a genotype as a graph, drawn in DARTS' visual language (its visualize.py): inputs c_{k-2} and c_{k-1},
numbered intermediate nodes, one edge per (op, input) pair labelled with the op, and every concatenated state
joined into the output c_{k}. Graphviz draws it where its `dot` program is installed, matplotlib otherwise; both
draw the same CellGraph."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import genotypes
from ..files import write_bytes
from ..spaces import state_name

INPUTS = (state_name(0), state_name(1))
OUTPUT = "c_{k}"
FILL = {"input": "darkseagreen2", "node": "lightblue", "output": "palegoldenrod"}  # DARTS' colours


@dataclass(frozen=True)
class CellGraph:
    cell_type: str
    nodes: tuple[tuple[str, str], ...]  # (name, input | node | output)
    edges: tuple[tuple[str, str, str], ...]  # (from, to, op label; "" for the concat)


def cell_graph(genotype: genotypes.Genotype, cell_type: str) -> CellGraph:
    pairs = getattr(genotype, cell_type)
    steps = len(pairs) // 2
    nodes = ([(name, "input") for name in INPUTS] + [(str(i), "node") for i in range(steps)]
             + [(OUTPUT, "output")])
    edges = [(state_name(inp), str(i // 2), op) for i, (op, inp) in enumerate(pairs)]
    edges += [(state_name(c), OUTPUT, "") for c in getattr(genotype, cell_type + "_concat")]
    return CellGraph(cell_type, tuple(nodes), tuple(edges))


def graphviz_available() -> bool:
    """The graphviz Python package and its `dot` program."""
    try:
        import graphviz  # noqa: F401
    except ImportError:
        return False
    return shutil.which("dot") is not None


def _graphviz(graph: CellGraph):
    import graphviz

    g = graphviz.Digraph(edge_attr={"fontsize": "20", "fontname": "times"}, engine="dot",
                         node_attr={"style": "filled", "shape": "rect", "align": "center", "fontsize": "20",
                                    "height": "0.5", "width": "0.5", "penwidth": "2", "fontname": "times"})
    g.attr(rankdir="LR")
    for name, kind in graph.nodes:
        g.node(name, fillcolor=FILL[kind])
    for src, dst, label in graph.edges:
        g.edge(src, dst, label=label, fillcolor="gray")
    return g


def _positions(graph: CellGraph) -> dict[str, tuple[float, float]]:
    """Left to right as dot would rank them: inputs, the nodes in order (alternately up and down), the output."""
    pos = {INPUTS[0]: (0.0, 1.0), INPUTS[1]: (0.0, -1.0), OUTPUT: (len(graph.nodes) - 2.0, 0.0)}
    steps = [name for name, kind in graph.nodes if kind == "node"]
    for i, name in enumerate(steps):
        pos[name] = (1.0 + i, 0.6 if i % 2 == 0 else -0.6)
    return pos


def _matplotlib(graph: CellGraph):
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch

    pos = _positions(graph)
    width = max(p[0] for p in pos.values())
    fig = Figure(figsize=(2.2 * width + 2, 4.5))
    ax = fig.add_subplot()
    ax.set_xlim(-0.6, width + 0.6)
    ax.set_ylim(-1.7, 1.7)
    ax.axis("off")
    for n, (src, dst, label) in enumerate(graph.edges):
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        rad = 0.0 if not label else (0.25 if n % 2 else -0.25) * min(1.0, abs(x1 - x0) / 2)
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                     mutation_scale=14, shrinkA=22, shrinkB=22, color="0.35" if label else "0.6",
                                     lw=1.4))
        if label:  # the label at the arc's middle: the chord's midpoint moved rad·length along its normal
            mx, my = (x0 + x1) / 2 - rad * (y1 - y0) / 2, (y0 + y1) / 2 + rad * (x1 - x0) / 2
            ax.text(mx, my, label, ha="center", va="center", fontsize=8, family="serif",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
    for name, kind in graph.nodes:
        ax.text(*pos[name], name, ha="center", va="center", fontsize=12, family="serif",
                bbox={"boxstyle": "square,pad=0.4", "fc": FILL[kind].rstrip("2"), "ec": "black", "lw": 1.5})
    ax.set_title(f"{graph.cell_type} cell", family="serif")
    return fig


def draw_cell(graph: CellGraph, path: Path, fmt: str, engine: str = "auto") -> str:
    """Write the diagram to `path` (format png or svg); returns the engine used (graphviz or matplotlib)."""
    if engine == "auto":
        engine = "graphviz" if graphviz_available() else "matplotlib"
    if engine == "graphviz":
        data = _graphviz(graph).pipe(format=fmt)
    else:
        from .figures import figure_bytes

        data = figure_bytes(_matplotlib(graph), fmt)
    write_bytes(path, data)
    return engine
