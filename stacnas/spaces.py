"""Search spaces: which candidate operations sit on every edge of the normal and the reduction cell.

A space gives, per cell type, either one op list for all edges or one list per edge (DARTS edge order:
node 0 from c_{k-2}, c_{k-1}; node 1 from c_{k-2}, c_{k-1}, node 0; ...). Edges may hold different numbers
of ops; the supernet masks the unused α entries instead of padding with fake ops.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import UsageError
from .files import read_text
from .names import CELL_TYPES
from .ops import OPS, PRIMITIVES


def num_edges(nodes: int) -> int:
    """Edges of a cell with `nodes` intermediate nodes: node i has 2 + i inputs."""
    return sum(2 + i for i in range(nodes))


def edge_endpoints(edges: int) -> list[tuple[int, int]]:
    """(input state, node) of each of a cell's `edges` edges, in DARTS' order: node i takes states 0 .. i+1."""
    ends, node = [], 0
    while len(ends) < edges:
        ends += [(state, node) for state in range(2 + node)]
        node += 1
    return ends[:edges]


def state_name(state: int) -> str:
    """DARTS' names of a cell's states: c_{k-2} and c_{k-1} (the cell's inputs), then the nodes 0, 1, ..."""
    return ("c_{k-2}", "c_{k-1}")[state] if state < 2 else str(state - 2)


@dataclass(frozen=True)
class Clusters:
    """A partition of a space's ops (without `none`) and one representative per group."""

    groups: tuple[tuple[str, ...], ...]
    representatives: tuple[str, ...]

    def __post_init__(self):
        if len(self.groups) != len(self.representatives):
            raise UsageError("clusters: one representative per cluster is needed")
        for group, rep in zip(self.groups, self.representatives):
            if rep not in group:
                raise UsageError(f"clusters: representative {rep!r} is not in its cluster {list(group)}")
        flat = [op for g in self.groups for op in g]
        if "none" in flat:
            raise UsageError("clusters: 'none' stands alone and is added to every edge by the search; leave it out")
        if len(flat) != len(set(flat)):
            raise UsageError("clusters: an operation appears in more than one cluster")

    def cluster_of(self, op: str) -> int:
        for i, group in enumerate(self.groups):
            if op in group:
                return i
        raise KeyError(f"operation {op!r} is in no cluster")

    def to_dict(self) -> dict:
        return {"groups": [list(g) for g in self.groups], "representatives": list(self.representatives)}

    def restricted_to(self, ops) -> "Clusters":
        """These clusters cut down to the given ops (a missing representative becomes the first member present);
        `noise` stands alone. Every op other than `none` must be covered."""
        ops = [op for op in ops if op != "none"]
        uncovered = [op for op in ops if op != "noise" and all(op not in g for g in self.groups)]
        if uncovered:
            raise UsageError(f"the clusters do not cover {uncovered}; use --clusters auto to compute them")
        groups, reps = [], []
        for group, rep in zip(self.groups, self.representatives):
            present = tuple(op for op in group if op in ops)
            if present:
                groups.append(present)
                reps.append(rep if rep in present else present[0])
        if "noise" in ops and ("noise",) not in groups:
            groups.append(("noise",))
            reps.append("noise")
        return Clusters(tuple(groups), tuple(reps))

    @classmethod
    def from_dict(cls, data: dict, where: str = "clusters") -> "Clusters":
        """From {"groups": [[op, ...], ...], "representatives": [op, ...]} (representatives optional: first
        members); other keys, such as the correlation matrices of an automatic clustering, are ignored."""
        groups = data.get("groups") if isinstance(data, dict) else None
        if not isinstance(groups, list) or not all(isinstance(g, list) and g and all(isinstance(op, str) for op in g)
                                                   for g in groups):
            raise UsageError(f"{where}: expected 'groups', a list of non-empty lists of op names")
        reps = data.get("representatives") or [g[0] for g in groups]
        if not isinstance(reps, list) or not all(isinstance(op, str) for op in reps):
            raise UsageError(f"{where}: expected 'representatives', a list of op names")
        try:
            return cls(tuple(tuple(g) for g in groups), tuple(reps))
        except ValueError as err:
            raise UsageError(f"{where}: {err}") from None


# The clustering StacNAS' reference code hard-coded for the DARTS ops (DESIGN.md §1).
PAPER_CLUSTERS = Clusters(
    groups=(
        ("max_pool_3x3", "avg_pool_3x3"),
        ("skip_connect",),
        ("sep_conv_3x3", "sep_conv_5x5"),
        ("dil_conv_3x3", "dil_conv_5x5"),
    ),
    representatives=("max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"),
)


@dataclass(frozen=True)
class SearchSpace:
    """`normal`/`reduce` hold either a tuple of op names (all edges) or a tuple of such tuples (per edge)."""

    name: str
    normal: tuple
    reduce: tuple
    clusters: Clusters | None = field(default=None)

    def __post_init__(self):
        for cell_type in CELL_TYPES:
            spec = getattr(self, cell_type)
            for ops in (spec if self.is_per_edge(cell_type) else (spec,)):
                _check_op_list(ops, f"space {self.name!r}, {cell_type} cell")
        if self.clusters is not None:
            outside = [op for g in self.clusters.groups for op in g if op not in self.ops()]
            if outside:
                raise UsageError(f"space {self.name!r}: clustered operations {outside} are not in the space")

    def is_per_edge(self, cell_type: str) -> bool:
        spec = getattr(self, cell_type)
        return bool(spec) and not isinstance(spec[0], str)

    def edge_ops(self, cell_type: str, nodes: int = 4) -> list[tuple[str, ...]]:
        """The op list of every edge of a cell with `nodes` intermediate nodes."""
        if cell_type not in CELL_TYPES:
            raise UsageError(f"cell type must be one of {CELL_TYPES}, got {cell_type!r}")
        spec = getattr(self, cell_type)
        edges = num_edges(nodes)
        if not self.is_per_edge(cell_type):
            return [tuple(spec)] * edges
        if len(spec) != edges:
            raise UsageError(
                f"space {self.name!r} lists {len(spec)} {cell_type} edges, but a cell with {nodes} nodes has "
                f"{edges}; use nodes={_nodes_for(len(spec))} or one op list for all edges"
            )
        return [tuple(ops) for ops in spec]

    def check_cells(self, nodes: int) -> None:
        """Both cells fit `nodes` nodes, and each node can keep two incoming edges holding an op other than `none`
        (what deriving a cell needs)."""
        for cell_type in CELL_TYPES:
            edge_ops, offset = self.edge_ops(cell_type, nodes), 0
            for node in range(nodes):
                usable = sum(any(op != "none" for op in edge_ops[offset + i]) for i in range(2 + node))
                if usable < 2:
                    raise UsageError(f"space {self.name!r}: node {node} of the {cell_type} cell has {usable} incoming "
                                     "edge(s) with an operation other than none; a cell needs two per node")
                offset += 2 + node

    def ops(self) -> list[str]:
        """Every op that appears anywhere in the space, in DARTS order first, then first appearance."""
        seen = []
        for cell_type in CELL_TYPES:
            spec = getattr(self, cell_type)
            for ops in (spec if self.is_per_edge(cell_type) else (spec,)):
                seen.extend(op for op in ops if op not in seen)
        order = {p: i for i, p in enumerate(PRIMITIVES)}
        return sorted(seen, key=lambda op: (order.get(op, len(order)), seen.index(op)))

    def to_dict(self) -> dict:
        out = {"name": self.name}
        for cell_type in CELL_TYPES:
            spec = getattr(self, cell_type)
            out[cell_type] = [list(e) for e in spec] if self.is_per_edge(cell_type) else list(spec)
        if self.clusters is not None:
            out["clusters"] = [list(g) for g in self.clusters.groups]
            out["representatives"] = list(self.clusters.representatives)
        return out


def _nodes_for(edges: int) -> str:
    for nodes in range(1, 12):
        if num_edges(nodes) == edges:
            return str(nodes)
    return "?"


def _check_op_list(ops, where: str) -> None:
    if isinstance(ops, str) or not ops:
        raise UsageError(f"{where}: an edge needs a non-empty list of operations")
    for op in ops:
        if not isinstance(op, str) or op not in OPS:
            raise UsageError(f"{where}: unknown operation {op!r}; known: {', '.join(sorted(OPS))}")
    if len(set(ops)) != len(ops):
        raise UsageError(f"{where}: an operation is listed twice on one edge: {list(ops)}")


_MAX, _AVG, _SKIP = "max_pool_3x3", "avg_pool_3x3", "skip_connect"
_SEP3, _DIL3, _DIL5 = "sep_conv_3x3", "dil_conv_3x3", "dil_conv_5x5"

# RobustDARTS S1: a different pair of ops per edge (DESIGN.md §3).
_S1_NORMAL = (
    (_SKIP, _DIL3), (_SKIP, _DIL5),
    (_SKIP, _DIL5), (_SKIP, _SEP3), (_SKIP, _DIL3),
    (_MAX, _SKIP), (_SKIP, _SEP3), (_SKIP, _SEP3), (_SKIP, _DIL3),
    (_SKIP, _SEP3), (_MAX, _SKIP), (_SKIP, _DIL3), (_DIL3, _DIL5), (_DIL3, _DIL5),
)  # fmt: skip
_S1_REDUCE = (
    (_MAX, _AVG), (_MAX, _DIL3),
    (_MAX, _AVG), (_MAX, _AVG), (_SKIP, _DIL5),
    (_MAX, _AVG), (_MAX, _SEP3), (_SKIP, _DIL3), (_SKIP, _DIL5),
    (_MAX, _AVG), (_MAX, _AVG), (_SKIP, _DIL5), (_SKIP, _DIL5), (_SKIP, _DIL5),
)  # fmt: skip


def _uniform(name, ops, clusters=None):
    return SearchSpace(name, tuple(ops), tuple(ops), clusters)


BUILTIN_SPACES = {
    "darts": _uniform("darts", PRIMITIVES, PAPER_CLUSTERS),
    "s1": SearchSpace("s1", _S1_NORMAL, _S1_REDUCE),
    "s2": _uniform("s2", (_SKIP, _SEP3)),
    "s3": _uniform("s3", ("none", _SKIP, _SEP3)),
    "s4": _uniform("s4", ("noise", _SEP3)),
}


def space_from_dict(data: dict, default_name: str = "custom") -> SearchSpace:
    if not isinstance(data, dict):
        raise UsageError("a space file must hold a mapping with keys 'normal' and 'reduce'")
    unknown = set(data) - {"name", *CELL_TYPES, "clusters", "representatives"}
    if unknown:
        raise UsageError(f"space file: unknown keys {sorted(map(str, unknown))}; allowed: name, normal, reduce, "
                         "clusters, representatives")
    specs = {}
    for cell_type in CELL_TYPES:
        spec = data.get(cell_type)
        if not isinstance(spec, list) or not spec:
            raise UsageError(f"space file: '{cell_type}' must be a list of op names or a list of such lists")
        per_edge = all(isinstance(e, list) for e in spec)
        if not per_edge and not all(isinstance(e, str) for e in spec):
            raise UsageError(f"space file: '{cell_type}' mixes op names and op lists")
        specs[cell_type] = tuple(tuple(e) for e in spec) if per_edge else tuple(spec)
    clusters = None
    if "clusters" in data:
        clusters = Clusters.from_dict({"groups": data["clusters"], "representatives": data.get("representatives")},
                                      "space file: clusters")
    return SearchSpace(str(data.get("name", default_name)), specs["normal"], specs["reduce"], clusters)


def load_space(spec) -> SearchSpace:
    """A built-in space by name (`darts`, `s1`..`s4`), a user space from a .yaml/.yml/.json file, or the mapping
    such a file holds."""
    if isinstance(spec, dict):
        return space_from_dict(spec)
    if not isinstance(spec, (str, Path)):
        raise UsageError(f"a search space is a name ({', '.join(BUILTIN_SPACES)}), a file path or a mapping, "
                         f"got {type(spec).__name__}")
    if spec in BUILTIN_SPACES:
        return BUILTIN_SPACES[spec]
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"unknown search space {str(spec)!r}: use one of {', '.join(BUILTIN_SPACES)} "
                         "or the path of a YAML/JSON space file")
    text = read_text(path, "space file")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise UsageError(f"space file {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                         f"{str(err).splitlines()[0]}") from None
    return space_from_dict(data, default_name=path.stem)
